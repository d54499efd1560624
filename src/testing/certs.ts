import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { canInstallWithApt, installWithApt, onPath } from './etcd-binary.js';

/*
 * Throwaway certificates for a test cluster, made with the openssl CLI at
 * start time into the cluster's own (temporary) directory, so no private key
 * is ever checked in. EC P-256 keys: fast to make, accepted by etcd and
 * grpc-js. Valid for two days, which outlives any test run.
 */

/** PEM files of a certificate and its key. */
export interface CertificatePair {
  /** Path of the PEM certificate. */
  readonly certFile: string;
  /** Path of the PEM private key. */
  readonly keyFile: string;
  /** The certificate (PEM). */
  readonly cert: Buffer;
  /** The private key (PEM). */
  readonly key: Buffer;
}

/** The openssl binary, installed with apt-get when missing and allowed (root). */
export function findOpenssl(install = false): string {
  const found = onPath('openssl');
  if (found) return found;
  if (install && canInstallWithApt()) {
    installWithApt(['openssl']);
    const installed = onPath('openssl');
    if (installed) return installed;
  }
  throw new Error(
    'openssl not found: TLS test clusters make their certificates with it; ' +
      'install it with `sudo apt-get install openssl` (Debian/Ubuntu)',
  );
}

/** A private test CA in `dir` that signs server and client certificates. */
export class TestCertificateAuthority {
  /** The CA certificate and key. */
  readonly ca: CertificatePair;
  readonly #dir: string;
  readonly #openssl: string;

  private constructor(dir: string, openssl: string, ca: CertificatePair) {
    this.#dir = dir;
    this.#openssl = openssl;
    this.ca = ca;
  }

  /** Makes a new CA in `dir` (which must exist). */
  static create(dir: string, options: { install?: boolean } = {}): TestCertificateAuthority {
    const openssl = findOpenssl(options.install);
    const certFile = join(dir, 'ca.crt');
    const keyFile = join(dir, 'ca.key');
    run(openssl, [
      ...['req', '-x509', ...newKey(keyFile, certFile), '-days', '2', '-subj', '/CN=etcd-recipes test CA'],
      ...['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
    ]);
    return new TestCertificateAuthority(dir, openssl, read(certFile, keyFile));
  }

  /**
   * A certificate for etcd members: valid for 127.0.0.1 and localhost, for
   * both server and client use (members are each other's clients on the
   * peer port).
   */
  server(name = 'server'): CertificatePair {
    return this.#issue(name, 'etcd-recipes test server', [
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
      'extendedKeyUsage=serverAuth,clientAuth',
      'keyUsage=critical,digitalSignature,keyEncipherment',
    ]);
  }

  /**
   * A client certificate whose common name is `commonName`. With auth
   * enabled and client-certificate auth on, etcd takes the common name as
   * the user name when the client sends no password token.
   */
  client(commonName: string): CertificatePair {
    if (!/^[A-Za-z0-9._-]{1,64}$/.test(commonName)) {
      throw new RangeError(`commonName must be 1-64 of [A-Za-z0-9._-], got ${JSON.stringify(commonName)}`);
    }
    return this.#issue(`client-${commonName}`, commonName, [
      'extendedKeyUsage=clientAuth',
      'keyUsage=critical,digitalSignature,keyEncipherment',
    ]);
  }

  #issue(file: string, commonName: string, extensions: string[]): CertificatePair {
    const keyFile = join(this.#dir, `${file}.key`);
    const csrFile = join(this.#dir, `${file}.csr`);
    const certFile = join(this.#dir, `${file}.crt`);
    const extFile = join(this.#dir, `${file}.ext`);
    writeFileSync(extFile, `${extensions.join('\n')}\n`);
    run(this.#openssl, ['req', '-new', ...newKey(keyFile, csrFile), '-subj', `/CN=${commonName}`]);
    run(this.#openssl, [
      ...['x509', '-req', '-in', csrFile, '-CA', this.ca.certFile, '-CAkey', this.ca.keyFile],
      ...['-set_serial', `0x${randomBytes(8).toString('hex')}`, '-days', '2', '-extfile', extFile, '-out', certFile],
    ]);
    return read(certFile, keyFile);
  }
}

/** `openssl req`'s arguments for a new unencrypted P-256 key in `keyFile`, with the request or certificate in `out`. */
function newKey(keyFile: string, out: string): string[] {
  return ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile, '-out', out];
}

function run(openssl: string, args: string[]): void {
  try {
    execFileSync(openssl, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`openssl ${args[0]} failed: ${stderr || (err as Error).message}`);
  }
}

function read(certFile: string, keyFile: string): CertificatePair {
  return { certFile, keyFile, cert: readFileSync(certFile), key: readFileSync(keyFile) };
}

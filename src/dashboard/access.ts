import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

/*
 * Who may see the dashboard. On loopback without a token: anyone on this
 * machine, but only through a loopback Host header (a web page elsewhere
 * cannot reach it through DNS rebinding). With a token: only requests that
 * carry it, compared in constant time.
 */

/** True for an address that only this machine can reach. */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** The host part of a Host header (`127.0.0.1:8080`, `[::1]:80`, `localhost`). */
function hostOf(header: string): string {
  if (header.startsWith('[')) return header.slice(0, header.indexOf(']') + 1);
  const colon = header.lastIndexOf(':');
  return colon >= 0 ? header.slice(0, colon) : header;
}

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/** The token a request carries: `Authorization: Bearer <token>`, or `?token=` in the URL (the page's own requests). */
function tokenOf(req: IncomingMessage, url: URL): string | undefined {
  const auth = req.headers.authorization;
  if (auth?.startsWith('Bearer ')) return auth.slice(7);
  return url.searchParams.get('token') ?? undefined;
}

/**
 * Checks one request. Hashing both sides first gives equal-length inputs to
 * `timingSafeEqual`, so neither the content nor the length of the token
 * leaks through timing.
 */
export function allowed(req: IncomingMessage, url: URL, token: string | undefined): boolean {
  if (token !== undefined) {
    const given = tokenOf(req, url);
    return given !== undefined && timingSafeEqual(digest(given), digest(token));
  }
  return isLoopbackHost(hostOf(req.headers.host ?? ''));
}

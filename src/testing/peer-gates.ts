import { connect, createServer, type Server, type Socket } from 'node:net';
import { listenOnLoopback } from './member.js';

/*
 * The peer traffic of a cluster started with `partitionable`. Each member
 * advertises a gate: a TCP relay on 127.0.0.1 in front of its real peer port.
 * etcd's members talk to each other in plaintext HTTP/1.1, and every Raft
 * request names its sender in an `X-Server-From` header (the member ID in
 * hex). So a gate knows both ends of each connection it relays, and can
 * refuse the pairs a partition separates, in both directions, while each
 * side's own traffic flows.
 */

interface Relay {
  /** The sending member's ID (hex), once one of its requests named it. */
  from: string | undefined;
  /** The receiving member's name. */
  to: string;
  sockets: Socket[];
}

/** One gate per member, and the partition they enforce. */
export class PeerGates {
  /** Gate ports, in the order of the members given to {@link PeerGates.open}. */
  readonly ports: readonly number[];
  readonly #servers: Server[];
  readonly #namesById = new Map<string, string>();
  readonly #relays = new Set<Relay>();
  #isolated = new Set<string>();

  private constructor(servers: Server[], ports: number[]) {
    this.#servers = servers;
    this.ports = ports;
  }

  /** Opens a gate on a free port for each member, relaying to its real peer port. */
  static async open(members: readonly { name: string; peerPort: number }[]): Promise<PeerGates> {
    const servers: Server[] = [];
    const ports: number[] = [];
    let gates: PeerGates | undefined;
    try {
      for (const member of members) {
        const server = createServer((socket) => {
          if (gates) gates.#accept(socket, member.name, member.peerPort);
          else socket.resetAndDestroy();
        });
        servers.push(server);
        ports.push(await listenOnLoopback(server));
      }
    } catch (err) {
      for (const server of servers) server.close();
      throw err;
    }
    gates = new PeerGates(servers, ports);
    return gates;
  }

  /** Tells the gates which member an ID (decimal, as etcd's status reports it) belongs to. */
  learn(name: string, memberId: string): void {
    this.#namesById.set(BigInt(memberId).toString(16), name);
  }

  /** Cuts the named members off from the others: their connections are reset, new ones refused. */
  partition(isolated: readonly string[]): void {
    this.#isolated = new Set(isolated);
    for (const relay of this.#relays) if (!this.#allows(relay)) this.#reset(relay);
  }

  /** Ends the partition: connections are accepted again. */
  heal(): void {
    this.#isolated = new Set();
  }

  /** The members cut off now. */
  get isolated(): ReadonlySet<string> {
    return this.#isolated;
  }

  /** Stops listening and resets every relayed connection. */
  close(): void {
    for (const server of this.#servers) server.close();
    for (const relay of this.#relays) this.#reset(relay);
  }

  /** Connections that name no member we know (etcd's version and membership probes) always pass. */
  #allows(relay: Relay): boolean {
    const from = relay.from && this.#namesById.get(relay.from);
    return from === undefined || this.#isolated.has(from) === this.#isolated.has(relay.to);
  }

  #reset(relay: Relay): void {
    this.#relays.delete(relay);
    for (const socket of relay.sockets) socket.resetAndDestroy();
  }

  /**
   * Relays a connection, reading each request's `X-Server-From` before it
   * passes: a connection may open with a request that names no sender (a
   * probe) and carry Raft messages in later ones.
   */
  #accept(socket: Socket, to: string, peerPort: number): void {
    const upstream = connect(peerPort, '127.0.0.1');
    const relay: Relay = { from: undefined, to, sockets: [socket, upstream] };
    this.#relays.add(relay);
    const drop = () => {
      this.#relays.delete(relay);
      socket.destroy();
      upstream.destroy();
    };
    for (const s of relay.sockets) s.on('error', drop).on('close', drop);
    // The end of the previous chunk, so that a header split between two chunks is still read.
    let tail = '';
    socket.on('data', (chunk: Buffer) => {
      const text = tail + chunk.toString('latin1');
      tail = text.slice(-HEADER_TAIL_CHARS);
      for (const m of text.matchAll(SENDER)) relay.from = m[1]!.toLowerCase();
      if (!this.#allows(relay)) {
        this.#reset(relay);
        return;
      }
      if (!upstream.write(chunk)) {
        socket.pause();
        upstream.once('drain', () => socket.resume());
      }
    });
    upstream.pipe(socket);
  }
}

/** A request header naming the sending member, and how much of a chunk to keep to find one split in two. */
const SENDER = /\r\nX-Server-From: *([0-9a-f]+)\r\n/gi;
const HEADER_TAIL_CHARS = 64;

// Loaded into every Node program of a sandbox with network (NODE_OPTIONS=--import, egress/env.py): Node before
// 22.21 / 24.5 ignores HTTP_PROXY in fetch and in http(s).request, and the sandbox has no other way out. Newer
// Nodes do it themselves with NODE_USE_ENV_PROXY=1, so this steps aside for them.
//
// - https.request / https.get (and so most libraries): https.globalAgent tunnels through the proxy (CONNECT).
// - http.request / http.get: http.globalAgent tunnels too (CONNECT to host:80): the proxy checks it the same way.
// - fetch: http:// URLs go to the proxy in absolute form (so that credentials the proxy adds reach them),
//   https:// ones through a CONNECT tunnel; the answer is a standard Response.
// Hosts in NO_PROXY go direct (the sandbox's own loopback), as with every other client.
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { Readable } from 'node:stream';

const [major, minor] = process.versions.node.split('.').map(Number);
const native = major > 24 || (major === 24 && minor >= 5) || (major === 22 && minor >= 21);
const proxyText = process.env.HTTPS_PROXY || process.env.https_proxy || process.env.HTTP_PROXY
  || process.env.http_proxy;

if (proxyText && !native) {
  const proxy = new URL(proxyText);
  const proxyPort = Number(proxy.port) || 80;
  const bypass = (process.env.NO_PROXY || process.env.no_proxy || '').split(',').map((h) => h.trim().toLowerCase())
    .filter(Boolean);
  const direct = (host) => {
    const h = host.replace(/^\[|\]$/g, '').toLowerCase();
    return bypass.some((b) => h === b || (b.startsWith('.') && h.endsWith(b)));
  };

  // A socket to host:port through the proxy, then (tls) TLS over it, handed to callback(err, socket).
  const tunnel = (host, port, secure, tlsOptions, callback) => {
    const request = http.request({ host: proxy.hostname, port: proxyPort, method: 'CONNECT',
      path: `${host.includes(':') ? `[${host}]` : host}:${port}`, headers: { host: `${host}:${port}` } });
    request.once('connect', (response, socket) => {
      if (response.statusCode !== 200) {
        socket.destroy();
        const error = new Error(`egress proxy refused CONNECT ${host}:${port}: ${response.statusCode} `
          + `${response.headers['x-sandbox-egress'] || response.statusMessage}`);
        error.code = 'EEGRESSREFUSED';
        callback(error);
        return;
      }
      if (!secure) {
        callback(null, socket);
        return;
      }
      const secured = tls.connect({ ...tlsOptions, socket, servername: tlsOptions.servername
        || (net.isIP(host) ? undefined : host) });
      secured.once('secureConnect', () => callback(null, secured));
      secured.once('error', callback);
    });
    request.once('error', callback);
    request.end();
  };

  const tunnelling = (Base, secure) => class extends Base {
    constructor() {
      super({ keepAlive: false });
    }

    createConnection(options, callback) {
      const host = options.host || options.hostname || 'localhost';
      const port = Number(options.port) || (secure ? 443 : 80);
      if (direct(host)) {
        const socket = secure ? tls.connect(options) : net.connect(options);
        socket.once(secure ? 'secureConnect' : 'connect', () => callback(null, socket));
        socket.once('error', callback);
        return undefined;
      }
      tunnel(host, port, secure, options, callback);
      return undefined;
    }
  };

  https.globalAgent = new (tunnelling(https.Agent, true))();
  http.globalAgent = new (tunnelling(http.Agent, false))();

  const originalFetch = globalThis.fetch;
  const REDIRECTS = new Set([301, 302, 303, 307, 308]);
  globalThis.fetch = async function fetch(input, init) {
    let request = new Request(input, init);
    for (let hops = 0; ; hops += 1) {
      const response = await once(request);
      const location = response.headers.get('location');
      if (!REDIRECTS.has(response.status) || !location || request.redirect === 'manual') return response;
      if (request.redirect === 'error' || hops >= 20) throw new TypeError(`fetch failed: redirect to ${location}`);
      // Each hop is a new request: the proxy checks it on its own, as it checks every other.
      const method = response.status === 303 || ([301, 302].includes(response.status) && request.method === 'POST')
        ? 'GET' : request.method;
      request = new Request(new URL(location, request.url), { method, headers: request.headers,
        body: method === 'GET' || method === 'HEAD' ? undefined : await request.clone().arrayBuffer(),
        redirect: request.redirect, signal: request.signal });
    }
  };

  async function once(request) {
    const url = new URL(request.url);
    if ((url.protocol !== 'http:' && url.protocol !== 'https:') || direct(url.hostname)) {
      return originalFetch(request);
    }
    const body = request.body ? Buffer.from(await request.clone().arrayBuffer()) : undefined;
    const headers = {};
    request.headers.forEach((value, name) => { headers[name] = value; });
    if (body) headers['content-length'] = String(body.length);
    const response = await new Promise((resolve, reject) => {
      const options = url.protocol === 'http:'
        ? { host: proxy.hostname, port: proxyPort, path: url.href, method: request.method,
          headers: { ...headers, host: url.host }, agent: false }
        : { host: url.hostname, port: Number(url.port) || 443, path: `${url.pathname}${url.search}`,
          method: request.method, headers: { ...headers, host: url.host }, agent: https.globalAgent,
          servername: net.isIP(url.hostname) ? undefined : url.hostname };
      const outgoing = (url.protocol === 'http:' ? http : https).request(options, resolve);
      outgoing.once('error', reject);
      if (request.signal) request.signal.addEventListener('abort', () => outgoing.destroy(request.signal.reason));
      outgoing.end(body);
    });
    const responseHeaders = new Headers();
    for (const [name, value] of Object.entries(response.headers)) {
      for (const one of Array.isArray(value) ? value : [value]) responseHeaders.append(name, one);
    }
    const empty = request.method === 'HEAD' || [101, 204, 205, 304].includes(response.statusCode);
    return new Response(empty ? null : Readable.toWeb(response), {
      status: response.statusCode, statusText: response.statusMessage, headers: responseHeaders });
  }
}

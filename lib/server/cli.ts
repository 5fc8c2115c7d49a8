#!/usr/bin/env node
import { parseArgs } from 'node:util';
import type { RequestListener } from 'node:http';
import type { AddressInfo } from 'node:net';
import { bitsUpload } from '../middleware';
import type { BitsUploadOptions } from '../options';
import { createBitsServer } from './create-server';

const USAGE = `Usage: bits-upload [options]

A BITS upload endpoint (Windows bitsadmin / Start-BitsTransfer uploads) storing files on disk.

Options:
  --dir <path>                     where uploads land (default ./uploads)
  --port <n>                       port to listen on, 0 picks a free one (default 8080)
  --host <address>                 address to listen on (default 127.0.0.1)
  --mount <path>                   URL prefix of the endpoint (default /)
  --max-upload-size <bytes>        largest whole file accepted (default unlimited)
  --max-fragment-size <bytes>      largest single fragment accepted (default 16 MiB)
  --allow-overwrites               let an upload replace an existing file (default off)
  --session-timeout <seconds>      idle time before a session expires (default 14 days)
  --max-sessions <n>               open sessions at once (default 10000)
  --max-sessions-per-client <n>    open sessions per client address (default 50)
  --host-id <host>                 BITS-Host-Id sent to clients (default none)
  --host-id-fallback-timeout <s>   BITS-Host-Id-Fallback-Timeout (default 86400)
  -h, --help                       show this help

Sizes accept suffixes K, M, G (powers of 1024), e.g. 512M.`;

/** Parsed command line of the standalone server. */
interface CliConfig {
  readonly host: string;
  readonly port: number;
  readonly mount: string;
  readonly options: BitsUploadOptions;
}

/** Thrown for a command line that cannot be used; the message is shown to the user. */
class UsageError extends Error {}

function parseCommandLine(argv: readonly string[]): CliConfig | 'help' {
  const { values } = parseArgs({
    args: [...argv],
    strict: true,
    options: {
      dir: { type: 'string', default: './uploads' },
      port: { type: 'string', default: '8080' },
      host: { type: 'string', default: '127.0.0.1' },
      mount: { type: 'string', default: '/' },
      'max-upload-size': { type: 'string' },
      'max-fragment-size': { type: 'string' },
      'allow-overwrites': { type: 'boolean', default: false },
      'session-timeout': { type: 'string' },
      'max-sessions': { type: 'string' },
      'max-sessions-per-client': { type: 'string' },
      'host-id': { type: 'string' },
      'host-id-fallback-timeout': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) return 'help';
  const port = parseInteger('--port', values.port);
  if (port > 65535) throw new UsageError(`--port must be between 0 and 65535, got ${values.port}`);
  const mount = values.mount.startsWith('/') ? values.mount : `/${values.mount}`;
  const options: BitsUploadOptions = {
    directory: values.dir,
    allowOverwrites: values['allow-overwrites'],
    ...optional('maxUploadSize', values['max-upload-size'], (v) => parseSize('--max-upload-size', v)),
    ...optional('maxFragmentSize', values['max-fragment-size'], (v) => parseSize('--max-fragment-size', v)),
    ...optional('sessionTimeout', values['session-timeout'], (v) => parseInteger('--session-timeout', v) * 1000),
    ...optional('maxSessions', values['max-sessions'], (v) => parseInteger('--max-sessions', v)),
    ...optional('maxSessionsPerPrincipal', values['max-sessions-per-client'], (v) =>
      parseInteger('--max-sessions-per-client', v),
    ),
    ...optional('hostId', values['host-id'], (v) => v),
    ...optional('hostIdFallbackTimeout', values['host-id-fallback-timeout'], (v) =>
      parseInteger('--host-id-fallback-timeout', v),
    ),
  };
  return { host: values.host, port, mount: mount.length > 1 ? mount.replace(/\/+$/, '') : mount, options };
}

function optional<K extends keyof BitsUploadOptions, T>(
  key: K,
  raw: string | undefined,
  parse: (value: string) => T,
): Partial<Record<K, T>> {
  return raw === undefined ? {} : ({ [key]: parse(raw) } as Partial<Record<K, T>>);
}

function parseInteger(flag: string, raw: string): number {
  if (!/^\d+$/.test(raw)) throw new UsageError(`${flag} must be a whole number, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

function parseSize(flag: string, raw: string): number {
  const match = /^(\d+)\s*([KMG]?)(i?B)?$/i.exec(raw.trim());
  if (match === null) throw new UsageError(`${flag} must be a size such as 1048576, 512K, 16M or 2G, got ${JSON.stringify(raw)}`);
  const unit = (match[2] ?? '').toUpperCase();
  const factor = unit === 'G' ? 2 ** 30 : unit === 'M' ? 2 ** 20 : unit === 'K' ? 2 ** 10 : 1;
  return Number(match[1]) * factor;
}

/** Loads Express, which the standalone server is built on; the middleware itself does not need it. */
type ExpressApp = RequestListener & { use(path: string, handler: unknown): unknown; disable(setting: string): unknown };

async function loadExpress(): Promise<() => ExpressApp> {
  try {
    const express = (await import('express')) as unknown as { default: () => ExpressApp };
    return express.default;
  } catch {
    throw new UsageError('The bits-upload command runs on Express: install it with `npm install express`.');
  }
}

async function main(): Promise<void> {
  const config = parseCommandLine(process.argv.slice(2));
  if (config === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const express = await loadExpress();
  const app = express();
  app.disable('x-powered-by');
  const middleware = bitsUpload(config.options);
  app.use(config.mount, middleware);
  const server = createBitsServer(app);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  process.stdout.write(`listening on http://${host}:${port}${config.mount}\n`);

  const stop = (): void => {
    // New sessions are refused at once; packets in flight finish (at most 10 s), then the HTTP server
    // stops accepting connections, idle keep-alive connections are dropped, and the process exits.
    const forceExit = setTimeout(() => {
      server.closeAllConnections();
      process.exit(0);
    }, 15_000);
    forceExit.unref();
    void middleware.close({ timeout: 10_000 }).then(() => {
      server.close(() => process.exit(0));
      server.closeIdleConnections();
    });
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((error: unknown) => {
  // Bad flags and invalid option values (TypeError from bitsUpload) are the user's to fix: no stack.
  const isUsage =
    error instanceof UsageError ||
    error instanceof TypeError ||
    (error instanceof Error && 'code' in error && String(error.code).startsWith('ERR_PARSE_ARGS'));
  const message = error instanceof Error ? (isUsage ? error.message : (error.stack ?? error.message)) : String(error);
  process.stderr.write(`bits-upload: ${message}\n${isUsage ? 'Run bits-upload --help for the options.\n' : ''}`);
  process.exitCode = isUsage ? 2 : 1;
});

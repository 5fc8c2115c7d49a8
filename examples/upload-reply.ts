// An upload-reply endpoint: Windows clients upload a text file with an upload-reply job
// (`bitsadmin /create /upload-reply`, BITS_JOB_UPLOAD_REPLY) and download the reply, here the
// line count and SHA-256 of what they sent. Uploads to /convert/... are answered in-process and
// are not kept; uploads to /archive/... are also stored in ./uploads (copyToDestination).
import { createInterface } from 'node:readline';
import express from 'express';
import { BitsError, bitsUpload, createBitsServer, type ReplyHandler } from 'bits-upload';

/** Counts the lines of the upload while streaming it from storage; the reply is a small JSON text. */
const summarize: ReplyHandler = async (upload) => {
  if (upload.size > 64 * 1024 * 1024) {
    // A thrown error becomes the final fragment's error Ack (context 0x7); 413 here is fatal for
    // the job. 503 would make the client retry later, calling the handler again.
    throw Object.assign(new Error('too large to summarize'), { status: 413 });
  }
  let lines = 0;
  for await (const _line of createInterface({ input: await upload.read(), crlfDelay: Infinity })) lines += 1;
  const summary = JSON.stringify({ file: upload.destination.join('/'), bytes: upload.size, lines, sha256: upload.sha256 });
  return { body: `${summary}\r\n`, copyToDestination: upload.destination[0] === 'archive' };
};

const app = express();
app.use(
  '/bits',
  bitsUpload({
    directory: './uploads',
    reply: summarize,
    // Behind a reverse proxy, name the public address of this mount point so that the reply URL
    // in BITS-Reply-URL points at the proxy (or set trustForwardedHeaders: true instead).
    ...(process.env.PUBLIC_URL !== undefined && { publicUrl: process.env.PUBLIC_URL }),
  }).on('upload-failed', ({ sessionId, error }) => {
    console.error('upload-reply failed', sessionId, error instanceof BitsError ? error.code : error.message);
  }),
);

// The client then GETs http://<host>/bits/BITS-Sessions/Replies/%7B<id>%7D/responsefile.bin
// (HEAD and ranged GETs are served by the same middleware) until it sends Close-Session.
createBitsServer(app).listen(8080, () => console.log('upload-reply endpoint on http://127.0.0.1:8080/bits/'));

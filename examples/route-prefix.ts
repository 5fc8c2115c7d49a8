// BITS uploads under /uploads beside an ordinary API, on HTTPS or HTTP.
import { readFileSync } from 'node:fs';
import express from 'express';
import { bitsUpload, createBitsServer } from 'bits-upload';

const app = express();
app.get('/health', (_req, res) => {
  res.json({ ok: true });
});

const uploads = express.Router();
uploads.use(
  bitsUpload({
    directory: './uploads',
    maxUploadSize: 2 * 1024 ** 3,
    allowOverwrites: false,
  }),
);
app.use('/uploads', uploads);

// Other routes and body parsers come after the BITS endpoint.
app.use(express.json());

const tls = process.env.TLS_KEY && process.env.TLS_CERT
  ? { key: readFileSync(process.env.TLS_KEY), cert: readFileSync(process.env.TLS_CERT) }
  : undefined;
createBitsServer(app, tls ? { tls } : {}).listen(tls ? 8443 : 8080);

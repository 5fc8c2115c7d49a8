// Upload-reply through an IIS-style HTTP notification: the BITS endpoint on :8080 posts each
// completed upload to an application on :9000 (mode 'value': the upload is the request body) and
// serves the application's response body as the reply. The application may live on another host
// or be written in any language; here it is a second Express app that answers with the upload's size.
import express from 'express';
import { bitsUpload, createBitsServer } from 'bits-upload';

const application = express();
application.post('/bits/notify', (req, res) => {
  let bytes = 0;
  req.on('data', (chunk: Buffer) => (bytes += chunk.length));
  req.on('end', () => {
    // Headers IIS applications know: BITS-Original-Request-URL names the upload.
    res.type('text/plain').send(`received ${bytes} bytes for ${req.get('BITS-Original-Request-URL') ?? '?'}\r\n`);
  });
});
application.listen(9000, '127.0.0.1');

const app = express();
app.use(
  '/uploads',
  bitsUpload({
    directory: './uploads',
    // A 503 from the application makes the client retry later; 4xx fails the job.
    notification: { url: 'http://127.0.0.1:9000/bits/notify', mode: 'value', timeout: 60_000 },
  }),
);
createBitsServer(app).listen(8080);

// The smallest useful BITS upload endpoint: files land in ./uploads.
// Run: npx tsc -p . && node dist/... or simply use `npm start`, which runs the same setup.
import express from 'express';
import { acceptBitsPost, bitsUpload } from 'bits-upload';

const app = express();
// Mount before any body parser: BITS fragments are raw bytes of up to 13 MB.
app.use(bitsUpload('./uploads'));
acceptBitsPost(app.listen(8080, () => console.log('BITS uploads on http://127.0.0.1:8080/')));

const crypto = require('crypto');
const { Buffer } = require('buffer');

function sha256(text) {
  return crypto.createHash('sha256').update(text).digest('hex');
}

function hmac(key, text) {
  return crypto.createHmac('sha256', key).update(text).digest('base64');
}

const key = crypto.randomBytes(32);
const iv = crypto.randomBytes(16);
const cipher = crypto.createCipheriv('aes-256-cbc', key, iv);
const encrypted = Buffer.concat([cipher.update('secret message', 'utf8'), cipher.final()]);
const decipher = crypto.createDecipheriv('aes-256-cbc', key, iv);
const decrypted = Buffer.concat([decipher.update(encrypted), decipher.final()]).toString('utf8');

console.log(sha256('abc'), hmac(key, 'abc').length, decrypted, crypto.randomUUID().length);

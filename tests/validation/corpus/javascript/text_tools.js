// Text utilities: regex literals, divisions, templates and comments.
const text = `Name: Ada Lovelace
Born: 1815-12-10
Email: ada@example.org`;

const fields = Object.fromEntries(
  text.split(/\r?\n/).map((line) => line.split(/:\s*/)).filter((pair) => pair.length === 2),
);
const born = new Date(fields.Born);
const years = (new Date('1852-11-27') - born) / (365.25 * 24 * 3600 * 1000);
const ratio = 10 / 4 / 2; /* a block comment with require('child_process') inside */
const emailOk = /^[^@\s]+@[^@\s]+\.[a-z]{2,}$/i.test(fields.Email);
const slug = fields.Name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
const counts = {};
for (const ch of text.replace(/\s/g, '')) counts[ch] = (counts[ch] || 0) + 1;
const top = Object.entries(counts).sort(([, a], [, b]) => b - a).slice(0, 3);
console.log(`${slug}: ${years.toFixed(1)} years, ratio ${ratio}, email ${emailOk ? 'ok' : 'bad'}`);
console.log(top, JSON.stringify({ evaluation: 'none', requirement: "exec" }));

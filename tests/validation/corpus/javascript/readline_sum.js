const readline = require("readline");
const { Readable } = require("stream");

const input = Readable.from(["3 4\n", "10 -2\n", "# comment\n", "7\n"]);
const rl = readline.createInterface({ input, crlfDelay: Infinity });

let total = 0;
let count = 0;
rl.on("line", (line) => {
  if (line.startsWith("#")) return;
  for (const token of line.trim().split(/\s+/)) {
    const value = Number.parseInt(token, 10);
    if (!Number.isNaN(value)) {
      total += value;
      count += 1;
    }
  }
});
rl.on("close", () => {
  const mean = count ? total / count : 0;
  console.log(`sum=${total} count=${count} mean=${mean.toFixed(2)}`);
});

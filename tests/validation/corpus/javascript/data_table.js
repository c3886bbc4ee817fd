const assert = require('assert');
const { performance } = require('perf_hooks');

const rows = Array.from({ length: 1000 }, (_, i) => ({ id: i, group: ['a', 'b', 'c'][i % 3], value: (i * 37) % 101 }));

function groupBy(items, key) {
  return items.reduce((acc, item) => {
    (acc[item[key]] ||= []).push(item);
    return acc;
  }, {});
}

const start = performance.now();
const stats = Object.entries(groupBy(rows, 'group')).map(([group, items]) => {
  const values = items.map((r) => r.value).sort((x, y) => x - y);
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  const median = values[Math.floor(values.length / 2)];
  return { group, n: values.length, mean: +mean.toFixed(2), median };
});
assert.strictEqual(stats.length, 3);
console.table(stats);
console.log(`took ${(performance.now() - start).toFixed(1)} ms`, new Map(stats.map((s) => [s.group, s.mean])));

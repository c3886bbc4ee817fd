const { setTimeout: sleep } = require('timers/promises');
const { EventEmitter } = require('events');

async function fetchLike(id) {
  await sleep(5 * (id % 3));
  if (id === 4) throw new Error(`item ${id} failed`);
  return { id, value: id * id };
}

async function main() {
  const results = await Promise.allSettled([1, 2, 3, 4, 5].map(fetchLike));
  for (const r of results) {
    console.log(r.status, r.status === 'fulfilled' ? r.value.value : r.reason.message);
  }
  const fastest = await Promise.race([sleep(20, 'slow'), sleep(1, 'fast')]);
  console.log('race', fastest);
  const bus = new EventEmitter();
  const done = new Promise((resolve) => bus.once('done', resolve));
  setTimeout(() => bus.emit('done', 42), 2);
  console.log('event', await done);
  for await (const n of (async function* gen() { yield 1; yield 2; })()) {
    console.log('gen', n);
  }
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});

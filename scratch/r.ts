import { Ring } from '../src/routing/ring.js';
const r = new Ring([{label:'127.0.0.1:11211',weight:1},{label:'127.0.0.1:11212',weight:1},{label:'127.0.0.1:11213',weight:1}]);
console.log(r.order(Buffer.from('foo')), r.order(Buffer.from('__proto__')), r.order(Buffer.from([0xff,0xfe])));
console.log((r as any).points.length);

class Shape {
  #id;
  static count = 0;

  constructor(name) {
    this.name = name;
    this.#id = ++Shape.count;
  }

  get id() {
    return this.#id;
  }

  area() {
    throw new Error('not implemented');
  }

  toString() {
    return `${this.name}#${this.id} area=${this.area().toFixed(2)}`;
  }
}

class Circle extends Shape {
  constructor(r) {
    super('circle');
    this.r = r;
  }
  area() { return Math.PI * this.r ** 2; }
}

class Rect extends Shape {
  constructor(w, h) {
    super('rect');
    Object.assign(this, { w, h });
  }
  area() { return this.w * this.h; }
}

const shapes = [new Circle(1), new Rect(2, 3), new Circle(0.5)];
shapes.sort((a, b) => a.area() - b.area());
shapes.forEach((s) => console.log(String(s)));
console.log(shapes.map((s) => s instanceof Circle), typeof Shape === 'function');
module.exports = { Shape, Circle, Rect };

// The two MLPs of the supported families, with their checkpoint names.

import { geluNew, gelu, mul, relu, silu, type Tensor } from '../tensor/index.js';
import { Linear, type InitOptions } from './layers.js';
import { Module } from './module.js';

export type Activation = 'gelu_new' | 'gelu' | 'gelu_pytorch_tanh' | 'relu' | 'silu';

export function activate(x: Tensor, act: Activation): Tensor {
  switch (act) {
    case 'gelu_new':
    case 'gelu_pytorch_tanh':
      return geluNew(x);
    case 'gelu':
      return gelu(x);
    case 'relu':
      return relu(x);
    case 'silu':
      return silu(x);
  }
}

export const ACTIVATIONS: readonly Activation[] = ['gelu_new', 'gelu', 'gelu_pytorch_tanh', 'relu', 'silu'];

/** SwiGLU: down_proj(silu(gate_proj x) * up_proj x) (Llama) */
export class GatedMLP extends Module {
  readonly gate_proj: Linear;
  readonly up_proj: Linear;
  readonly down_proj: Linear;

  constructor(dModel: number, hidden: number, opts: InitOptions & { bias?: boolean } = {}) {
    super();
    this.gate_proj = this.child('gate_proj', new Linear(dModel, hidden, opts));
    this.up_proj = this.child('up_proj', new Linear(dModel, hidden, opts));
    this.down_proj = this.child('down_proj', new Linear(hidden, dModel, opts));
  }

  forward(x: Tensor): Tensor {
    return this.down_proj.forward(mul(silu(this.gate_proj.forward(x)), this.up_proj.forward(x)));
  }
}

/** fc2(act(fc1 x)) with biases (Phi) */
export class MLP extends Module {
  readonly fc1: Linear;
  readonly fc2: Linear;

  constructor(
    dModel: number,
    hidden: number,
    readonly act: Activation,
    opts: InitOptions = {},
  ) {
    super();
    this.fc1 = this.child('fc1', new Linear(dModel, hidden, { ...opts, bias: true }));
    this.fc2 = this.child('fc2', new Linear(hidden, dModel, { ...opts, bias: true }));
  }

  forward(x: Tensor): Tensor {
    return this.fc2.forward(activate(this.fc1.forward(x), this.act));
  }
}

// The two MLPs of the supported families, with their checkpoint names.

import {
  add3,
  gatedActivation,
  geluMlp,
  geluNew,
  gelu,
  getAutocast,
  isGradEnabled,
  linearAct,
  linearResidual,
  relu,
  silu,
  unaryTo,
  type Tensor,
} from '../tensor/index.js';
import type { UnaryOp } from '../backends/backend.js';
import { linearActivation } from '../tensor/ops.js';
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

const ACTIVATION_OP: Record<Activation, UnaryOp> = {
  gelu_new: 'geluNew',
  gelu_pytorch_tanh: 'geluNew',
  gelu: 'gelu',
  relu: 'relu',
  silu: 'silu',
};

/** Gated MLP: down_proj(act(gate_proj x) * up_proj x); SwiGLU (Llama) or GeGLU (Gemma) */
export class GatedMLP extends Module {
  readonly gate_proj: Linear;
  readonly up_proj: Linear;
  readonly down_proj: Linear;
  readonly act: Activation;

  constructor(dModel: number, hidden: number, opts: InitOptions & { bias?: boolean; act?: Activation } = {}) {
    super();
    this.act = opts.act ?? 'silu';
    this.gate_proj = this.child('gate_proj', new Linear(dModel, hidden, opts));
    this.up_proj = this.child('up_proj', new Linear(dModel, hidden, opts));
    this.down_proj = this.child('down_proj', new Linear(hidden, dModel, opts));
  }

  forward(x: Tensor): Tensor {
    const g = this.gate_proj.forward(x);
    const u = this.up_proj.forward(x);
    // act(g) * u in one kernel each way where the backend has it, stored in 16 bits under autocast
    // (down_proj reads it so); composed otherwise
    // without biases the gradients of gate and up only feed 16-bit products: they come back in 16 bits
    const noBias = !this.gate_proj.bias && !this.up_proj.bias;
    return this.down_proj.forward(gatedActivation(ACTIVATION_OP[this.act], g, u, getAutocast(), noBias));
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

  /**
   * (r1 + r2) + forward(x), the parallel block's residual sum (add3's order): without gradients
   * under autocast, fc2's product adds it in its own pass where the backend fuses it
   * (decode-ops.ts linearResidual), else add3.
   */
  /** whether the activation is the tanh GELU (the op the fused GELU kernels apply) */
  get geluNew(): boolean {
    return ACTIVATION_OP[this.act] === 'geluNew';
  }

  forwardResidual(x: Tensor, r1: Tensor, r2: Tensor): Tensor {
    const dt = getAutocast();
    if (!dt || isGradEnabled() || !this.geluNew) return add3(r1, r2, this.forward(x));
    const h = linearAct(x, this.fc1.weight, this.fc1.bias, 'geluNew', dt);
    return linearResidual(h, this.fc2.weight, this.fc2.bias, r1, r2, dt);
  }

  forward(x: Tensor): Tensor {
    // training under autocast: fc1 and its activation as one op whose backward reads the
    // activation's gradient once (null where that does not apply)
    const act = linearActivation(x, this.fc1.weight, this.fc1.bias, ACTIVATION_OP[this.act]);
    if (act) return this.fc2.forward(act);
    if (this.geluNew) {
      // the tanh GELU in the products' epilogues where the backend has them (MOHAWK_GELU_EPILOGUE=1)
      const fused = geluMlp(x, this.fc1.weight, this.fc1.bias!, this.fc2.weight, this.fc2.bias!);
      if (fused) return fused;
    }
    // under autocast fc2 reads a 16-bit copy anyway: the activation writes it directly
    const dt = getAutocast();
    if (dt && !isGradEnabled() && this.geluNew)
      // no gradients (decoding, evaluation): the product, bias and GELU in one kernel where the
      // backend has it (decode-ops.ts; MOHAWK_DECODE_FUSED=0: the two kernels below)
      return this.fc2.forward(linearAct(x, this.fc1.weight, this.fc1.bias, 'geluNew', dt));
    const h = this.fc1.forward(x);
    return this.fc2.forward(
      dt && h.dtype === 'f32' ? unaryTo(ACTIVATION_OP[this.act], h, dt) : activate(h, this.act),
    );
  }
}

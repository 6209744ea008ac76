// Per-layer decoding state, owned by the caller of a forward pass: a KV cache for attention,
// conv + SSM state for SSM mixers. It lives here, beside the modules that fill it.

export interface LayerCache {
  kind: 'kv' | 'ssm';
  /** free the state's buffers */
  dispose(): void;
}

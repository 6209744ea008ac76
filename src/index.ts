// The library API of mohawk.

export * from './tensor/index.js';
export type { Backend, DType } from './backends/backend.js';
export { Random } from './util/random.js';
export { loadModel, saveModel, buildModel, registerFormat, type LoadedModel } from './models/load.js';
export type { CausalLM, ModelCache, Capture, ForwardResult } from './models/types.js';
export { StudentLM, studentConfigFromJson, studentConfigToJson } from './models/phi-mamba.js';
export { loadTokenizer, byteTokenizer, type Tokenizer } from './io/tokenizer.js';
export { readSafetensors, writeSafetensors, loadTensors } from './io/safetensors.js';
export { convertLlama2c } from './io/llama2c.js';
export { tokenLogprobs } from './eval/score.js';
export { generate, generateIds, type GenerateOptions } from './generate/generate.js';
export { transferStudent, studentConfigFor, type TransferOptions } from './distill/transfer.js';
export { matrixOrientationLoss, hiddenStateAlignmentLoss, distillationLoss } from './distill/losses.js';
export { loadConfig, validateConfig, type DistillConfig } from './distill/config.js';
export {
  runDistill,
  resultsTable,
  validationPerplexity,
  validationKl,
  type DistillResult,
} from './distill/pipeline.js';
export { train, type TrainOptions } from './train/index.js';
export { checkConfig, checkTable, type CheckedConfig } from './distill/check.js';
export { approximateAttention, MATRIX_CLASSES, type ApproxResult, type MatrixClass } from './eval/approx.js';
export { ToeplitzMixer } from './nn/toeplitz-mixer.js';
export { LinearAttentionMixer } from './nn/linear-attention-mixer.js';
export { BatchEngine, type SequenceRequest, type FinishReason } from './generate/batch.js';
export { createServer, type ServeOptions } from './serve/server.js';
export { ChatTemplate, loadChatTemplate, type ChatMessage } from './io/chat-template.js';
export { expandParquetInputs, parquetToJsonl } from './data/parquet.js';
export { readRun, writeRunReport } from './distill/report.js';
export { evaluateNeedle, type NeedleResult } from './eval/needle.js';
export { perplexityByPosition, type PositionResult } from './eval/position.js';

// mohawk diagnose: per-layer MOHAWK distances between a teacher and its student.

import fs from 'node:fs';
import { loadModel } from '../../models/load.js';
import { diagnose, renderMatrices } from '../../eval/diagnose.js';
import { encodePng } from '../../util/png.js';
import { CliError, deviceOption, flag, num, parse, required, selectDevice, str } from '../args.js';

const HELP = `usage: mohawk diagnose --teacher DIR --student DIR --file PATH [options]

On the teacher's own per-layer inputs (its residual stream entering each block), for every layer:
the Frobenius distance between the student's mixing matrix and the teacher's attention matrix
(averaged over sequences and heads; stage 1's objective), and the L2 distance between the
student's and the teacher's block outputs (averaged over tokens; stage 2's). End to end:
KL(teacher || student) per token and both models' next-token loss. Optionally a picture of the
teacher's attention matrix (left) beside the student's mixing matrix (right) for one layer and
head: white 0, red positive, blue negative, sqrt intensity on the teacher's scale.

  --teacher DIR      the teacher model directory (with tokenizer.json)
  --student DIR      the student model directory
  --file PATH        text to run (its first sequences * tokens tokens)
  --tokens T         tokens per sequence (default 128)
  --sequences N      consecutive sequences of T tokens from the file (default 1)
  --layer L          layer of the picture (default 0)
  --head H           head of the picture (default 0)
  --out-image PATH   write the picture: .png, or .svg (the PNG inside, with titles)
  --no-bos           do not prepend BOS
  --json             print the results as JSON
  --device D         cpu (default) or cuda`;

function svgWrap(png: Buffer, width: number, height: number, title: string): string {
  const top = 28;
  const half = width / 2;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height + top}" font-family="sans-serif" font-size="13">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${half / 2}" y="18" text-anchor="middle">teacher attention (${title})</text>`,
    `<text x="${half + half / 2}" y="18" text-anchor="middle">student mixing matrix (${title})</text>`,
    `<image x="0" y="${top}" width="${width}" height="${height}" style="image-rendering:pixelated" href="data:image/png;base64,${png.toString('base64')}"/>`,
    `</svg>`,
    '',
  ].join('\n');
}

export async function run(argv: string[]): Promise<number> {
  const p = parse(
    argv,
    {
      teacher: { type: 'string' },
      student: { type: 'string' },
      file: { type: 'string' },
      tokens: { type: 'string' },
      sequences: { type: 'string' },
      layer: { type: 'string' },
      head: { type: 'string' },
      'out-image': { type: 'string' },
      'no-bos': { type: 'boolean' },
      json: { type: 'boolean' },
      ...deviceOption,
    },
    HELP,
  );
  if (!p) return 0;
  const teacherDir = required(p, 'teacher', HELP);
  const studentDir = required(p, 'student', HELP);
  const file = required(p, 'file', HELP);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new CliError(`--file: cannot read ${file}`);
  }
  const T = num(p, 'tokens', 128, { integer: true, min: 2 });
  const S = num(p, 'sequences', 1, { integer: true, min: 1 });
  const layer = num(p, 'layer', 0, { integer: true, min: 0 });
  const head = num(p, 'head', 0, { integer: true, min: 0 });
  const image = str(p, 'out-image');
  if (image !== undefined && !/\.(png|svg)$/i.test(image))
    throw new CliError(`--out-image: ${image} must end in .png or .svg`);
  await selectDevice(p);
  const { model: teacher, tokenizer } = loadModel(teacherDir);
  if (!tokenizer) throw new CliError(`--teacher: ${teacherDir} has no tokenizer.json`);
  const { model: student } = loadModel(studentDir, { tokenizer: false });
  if (T > teacher.info.maxSeqLen)
    throw new CliError(`--tokens: ${T} exceeds the teacher's ${teacher.info.maxSeqLen} positions`);
  if (layer >= teacher.info.nLayers)
    throw new CliError(`--layer: ${layer} is not a layer of the teacher (0..${teacher.info.nLayers - 1})`);
  const all = tokenizer.encode(text, flag(p, 'no-bos') ? { addBos: false } : {});
  if (all.length < S * T)
    throw new CliError(
      `--file: ${file} has ${all.length} tokens, fewer than --sequences ${S} x --tokens ${T}`,
    );
  const ids = Array.from({ length: S }, (_, s) => all.slice(s * T, (s + 1) * T));
  const d = diagnose(teacher, student, ids, { picture: { layer, head } });
  if (image !== undefined && d.picture) {
    const img = renderMatrices(d.picture.teacher, d.picture.student, d.picture.size);
    const png = encodePng(img.width, img.height, img.rgb);
    if (/\.svg$/i.test(image))
      fs.writeFileSync(image, svgWrap(png, img.width, img.height, `layer ${layer}, head ${head}`));
    else fs.writeFileSync(image, png);
  }
  if (flag(p, 'json')) {
    const { picture: _p, ...rest } = d;
    console.log(
      JSON.stringify(
        { ...rest, config: { teacher: teacherDir, student: studentDir, file, image: image ?? null } },
        null,
        2,
      ),
    );
    return 0;
  }
  const rows = [
    ['layer', 'mixer', '||M_s - M_t||_F', '||M_t||_F', '||y_s - y_t||_2', '||y_t||_2'],
    ...d.layers.map((l) => [
      String(l.layer),
      l.mixer,
      l.matrixDistance.toFixed(4),
      l.teacherMatrixNorm.toFixed(4),
      l.outputDistance.toFixed(4),
      l.teacherOutputNorm.toFixed(4),
    ]),
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const r of rows)
    console.log(r.map((x, c) => (c < 2 ? x.padEnd(widths[c]) : x.padStart(widths[c]))).join('  '));
  console.log(
    `KL(teacher || student) ${d.kl.toFixed(4)} nats/token   next-token loss: teacher ${d.teacherNll.toFixed(4)}, student ${d.studentNll.toFixed(4)}   (${d.sequences} x ${d.tokens / d.sequences} tokens)`,
  );
  if (image !== undefined)
    console.log(`picture: ${image} (left teacher, right student; layer ${layer}, head ${head})`);
  return 0;
}

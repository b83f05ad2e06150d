// Read a caiman_dask zarr store with zarrita (JavaScript) and rebuild RCM frames from the factors.
//
//   node tests/js/read_store.mjs <store.zarr> <movie> <t0,t1,...>
//
// Reads the stored frames <movie>/0[t] for the given frame indices, the CSC factor
// factors/A/{data,indices,indptr} (rows in CaImAn's Fortran pixel order
// p = i + d1*j + d1*d2*k, shape in the group attribute "shape"), the traces factors/C (or the
// traces the export used), factors/dims and the root attributes "caiman_dask"; rebuilds the
// frames as frame[i][j][k] = sum_c A[p(i,j,k), c] * C[c, t] over the exported components, in
// plain JavaScript; prints one JSON object to stdout:
//
//   {"dims", "T", "K", "factor_dims", "axes", "frames", "components", "traces",
//    "frames_stored", "frames_rebuilt", "max_abs_diff_js"}
//
// frames_stored / frames_rebuilt are nested arrays (n_frames, *dims). Numbers are float64 and
// JSON.stringify writes the shortest round-tripping decimal, so Python reads the same doubles.
// Used by tests/test_js_interop.py; zarrita decodes zstd (and Blosc) through numcodecs.js.

import * as zarr from "zarrita";
import FileSystemStore from "@zarrita/storage/fs";

function fail(msg) {
  process.stderr.write(`read_store.mjs: ${msg}\n`);
  process.exit(2);
}

const [storePath, movieName, framesArg] = process.argv.slice(2);
if (!storePath || !movieName || !framesArg) {
  fail("usage: node read_store.mjs <store.zarr> <movie> <t0,t1,...>");
}
const frameIdx = framesArg.split(",").map((s) => {
  const t = Number.parseInt(s, 10);
  if (!Number.isInteger(t) || t < 0) fail(`bad frame index ${JSON.stringify(s)}`);
  return t;
});

const root = zarr.root(new FileSystemStore(storePath));

async function openArray(path) {
  return zarr.open(root.resolve(path), { kind: "array" });
}
async function openGroup(path) {
  return zarr.open(root.resolve(path), { kind: "group" });
}
/** A whole 1-D array as plain JS numbers (int64 arrive as BigInt64Array). */
async function read1d(path) {
  const chunk = await zarr.get(await openArray(path));
  return Array.from(chunk.data, Number);
}
/** A zarrita chunk (data, shape, stride) as a C-order Float64Array. */
function toCOrder(chunk) {
  const { data, shape, stride } = chunk;
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float64Array(n);
  const idx = new Array(shape.length).fill(0);
  for (let flat = 0; flat < n; flat++) {
    let off = 0;
    for (let d = 0; d < shape.length; d++) off += idx[d] * stride[d];
    out[flat] = Number(data[off]);
    for (let d = shape.length - 1; d >= 0; d--) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}
/** A flat C-order array as nested arrays of the given shape. */
function nest(flat, shape, offset = 0) {
  if (shape.length === 0) return flat[offset];
  const [n, ...rest] = shape;
  const step = rest.reduce((a, b) => a * b, 1);
  const out = [];
  for (let i = 0; i < n; i++) out.push(nest(flat, rest, offset + i * step));
  return out;
}

// --- metadata --------------------------------------------------------------------------------
const rootGroup = await openGroup("/");
const info = rootGroup.attrs.caiman_dask;
if (!info) fail(`${storePath} has no "caiman_dask" root attribute: not a caiman_dask store`);
const dims = info.dims.map(Number);
const T = Number(info.T);
const K = Number(info.K);
const params = info.parameters ?? {};

const image = await openGroup(movieName);
const ome = image.attrs.ome ?? {};
const multiscales = ome.multiscales ?? image.attrs.multiscales; // OME-Zarr 0.5 (v3) or 0.4 (v2)
const axes = multiscales[0].axes.map((a) => a.name);

// --- stored frames ---------------------------------------------------------------------------
const movie = await openArray(`${movieName}/0`);
const frameSize = dims.reduce((a, b) => a * b, 1);
if (movie.shape.length !== dims.length + 1 || movie.shape.slice(1).some((s, d) => s !== dims[d])) {
  fail(`${movieName}/0 has shape ${movie.shape}, expected (T, ${dims})`);
}
const stored = [];
for (const t of frameIdx) {
  if (t >= movie.shape[0]) fail(`frame ${t} out of range (T=${movie.shape[0]})`);
  const sel = [t, ...dims.map(() => null)];
  stored.push(toCOrder(await zarr.get(movie, sel)));
}

// --- factors ---------------------------------------------------------------------------------
const factorDims = await read1d("factors/dims");
const aGroup = await openGroup("factors/A");
const [nPix, nComp] = aGroup.attrs.shape.map(Number);
if (aGroup.attrs.format !== "csc") fail(`factors/A has format ${aGroup.attrs.format}, not csc`);
if (nPix !== frameSize || nComp !== K) fail(`factors/A has shape ${[nPix, nComp]}`);
const aData = await read1d("factors/A/data");
const aIndices = await read1d("factors/A/indices");
const aIndptr = await read1d("factors/A/indptr");
if (aIndptr.length !== K + 1) fail(`factors/A/indptr has length ${aIndptr.length}, not K+1`);

// the components and traces the export used (default: all components, C)
let components;
const sel = params.components ?? "all";
if (sel === "all") components = [...Array(K).keys()];
else if (sel === "good") components = await read1d("factors/idx_components");
else if (sel === "bad") components = await read1d("factors/idx_components_bad");
else if (Array.isArray(sel)) components = sel.map(Number);
else fail(`unknown component selection ${JSON.stringify(sel)}`);
const tracesName = typeof params.traces === "string" ? params.traces : "C";
const traces = await openArray(`factors/${tracesName}`).catch(() =>
  fail(`factors/${tracesName} (the exported traces) is missing`),
);
if (traces.shape[0] !== K || traces.shape[1] !== T) fail(`factors/${tracesName} is not (K, T)`);

// --- rebuild: frame[i, j, k] = sum_c A[i + d1*j + d1*d2*k, c] * C[c, t] ------------------------
// Fortran pixel index p -> C-order frame index: decompose p with d1 fastest, then recompose.
const fToC = new Int32Array(frameSize);
for (let p = 0; p < frameSize; p++) {
  let rem = p;
  const ijk = dims.map((d) => {
    const x = rem % d;
    rem = Math.floor(rem / d);
    return x;
  });
  let c = 0;
  for (let d = 0; d < dims.length; d++) c = c * dims[d] + ijk[d];
  fToC[p] = c;
}
const rebuilt = [];
let maxAbsDiff = 0;
for (let f = 0; f < frameIdx.length; f++) {
  const t = frameIdx[f];
  const coef = (await zarr.get(traces, [null, t])).data; // column t of the traces, length K
  const frame = new Float64Array(frameSize);
  for (const c of components) {
    const w = Number(coef[c]);
    for (let n = aIndptr[c]; n < aIndptr[c + 1]; n++) frame[fToC[aIndices[n]]] += aData[n] * w;
  }
  for (let q = 0; q < frameSize; q++) {
    maxAbsDiff = Math.max(maxAbsDiff, Math.abs(frame[q] - stored[f][q]));
  }
  rebuilt.push(frame);
}

const shape = [frameIdx.length, ...dims];
const flatten = (frames) => {
  const out = new Float64Array(frames.length * frameSize);
  frames.forEach((fr, f) => out.set(fr, f * frameSize));
  return out;
};
process.stdout.write(
  `${JSON.stringify({
    dims,
    T,
    K,
    factor_dims: factorDims,
    axes,
    frames: frameIdx,
    components,
    traces: tracesName,
    frames_stored: nest(flatten(stored), shape),
    frames_rebuilt: nest(flatten(rebuilt), shape),
    max_abs_diff_js: maxAbsDiff,
  })}\n`,
);

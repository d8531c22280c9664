// A whole calibrated DyVEDeep network in one call (appended to fast_kernel.cpp when built).
//
// Calling the site kernels one by one from Python costs tens of microseconds per site in
// the interpreter (more than a small site's kernel; benchmarks/NOTES.md). program.py
// lowers the network to a list of ops on per-sample buffers: the sites (the kernels of
// fast_kernel.cpp, knobs on or off, batch norm and ReLU fused), and the few operations
// between them (residual add, ReLU, pooling, the option-A shortcut, channel concatenation),
// LC-Net's and ConvNet-AIG's gated blocks (fast_gated.cpp) and early exits' decisions
// (fast_exit.cpp: a sample that leaves gets its head's logits as its output and runs no
// later op) and D2NN's controllers' decisions (fast_route.cpp); flatten and fused tails
// are aliases. Each sample has flags (D2NN: one per node that runs for some samples
// only): an op with a flag runs only where it is set, and one that does not run fills
// its output with a constant where a consumer expects a default there. One call runs the list for every
// sample, samples split over threads. A thread runs its samples in groups: each op for
// every sample of the group, then the next op, so a site's weights are loaded once per
// group, not once per sample (a whole network's weights do not fit in a core's L2); each
// sample of a group has its own buffers.

extern "C" {

enum {
  DYVE_OP_SITE = 0,   // a site's kernel: out = act(bn(conv(a))) with its knobs
  DYVE_OP_ADD,        // out = a + b
  DYVE_OP_RELU,       // out = max(a, 0)
  DYVE_OP_MAXPOOL,    // window kh x kw, stride sh x sw, padding ph x pw (padding never wins)
  DYVE_OP_AVGPOOL,    // same window; divisor as PyTorch's avg_pool2d (count_include_pad)
  DYVE_OP_MEAN,       // global average over h x w
  DYVE_OP_SHORTCUT,   // option-A shortcut: a[:, ::sh, ::sw] with ph zero channels each side
  DYVE_OP_CONCAT,     // out = a's channels, then b's (same h x w)
  DYVE_OP_GATED,      // a gated residual block (fast_gated.cpp)
  DYVE_OP_EXIT,       // an exit's decision on the head logits in a (fast_exit.cpp)
  DYVE_OP_ROUTE,      // a controller's decision on its Q-values in a (fast_route.cpp)
  DYVE_OP_FLAG,       // flags[flag] &= flags[flag2] (a node runs only where its input ran)
  DYVE_OP_SELECT,     // out = flags[flag] ? b : a
  DYVE_OP_PERMUTE,    // out[j] = a[index[j]] (oc values)
  DYVE_OP_ADD_RELU,   // out = max(a + b, 0): a residual join in one pass
};

struct DyveOp {
  int kind;
  int a, b, out;                // buffers: input, second input (add), output
  int c, h, w;                  // input shape per sample
  int oc, oh, ow;               // output shape per sample
  int kh, kw, sh, sw, ph, pw;   // window, stride, padding (shortcut: stride, channel pad)
  int count_include_pad;
  int slot;                     // SITE, GATED, EXIT: its row in the program's stats and changed
  DyveSite* site;               // DYVE_OP_SITE: geometry and knobs set; n, x, out unused
  DyveGate* gate;               // DYVE_OP_GATED: the block
  DyveExit* exit;               // DYVE_OP_EXIT: the policy
  int when, when2;              // flags (-1: none) that must be set for the op to run
  int fills;                    // 1: where the op does not run, its output is `fill`
  float fill;
  int flag, flag2;              // FLAG, SELECT: the flags they read and write
  const int* index;             // PERMUTE: [oc]
  DyveRoute* route;             // DYVE_OP_ROUTE: the controller's actions and targets
};

struct DyveProgram {
  int n, nops, nbuf, threads;
  const DyveOp* ops;
  const int64_t* floats;  // per-sample size of each buffer
  int in_buf, out_buf;    // the input buffer is x's row, the output buffer y's row
  const float* x;         // [n, floats[in_buf]]
  float* y;               // [n, floats[out_buf]]
  double* stats;          // [sites, n, DYVE_NSTAT]: each site's statistics per sample
  uint8_t* changed;       // [sites, n]
  double* seconds;        // [nops] or null: time spent in each op is added (one thread)
  int group;              // samples per group (<= 0: automatic, see program_range)
  int nflags;                 // flags per sample
  const uint8_t* flag_init;   // [nflags]: their values when a sample starts
};

}  // extern "C"

namespace {

// Max pooling (a NaN in the window wins, as in PyTorch), separable. Per channel: each
// output row's window rows are combined element-wise into a row of L floats (the input
// row between -inf padding: padding never wins), then each window start's max over kw
// columns is taken along all those rows at once (long vector loops: reading a row right
// after writing it stalled on store forwarding), then each output picks its start.
// About 3x fewer compares than window by window, nearly all in vectors; a max is exact in
// any order, so the result is PyTorch's.
inline float max_nan(float v, float m) { return (v > m) | (v != v) ? v : m; }

inline void max_into(float* r, const float* a, int n) {  // r = max_nan(a, r), n floats
  int x = 0;
  for (; x + V <= n; x += V) {
    const vf v = load(a + x), m = load(r + x);
    store(r + x, (v > m) | (v != v) ? v : m);
  }
  for (; x < n; ++x) r[x] = max_nan(a[x], r[x]);
}

void op_maxpool(const DyveOp& op, const float* a, float* o) {
  thread_local std::vector<float> buf;
  const int L = std::max(op.pw + op.w, (op.ow - 1) * op.sw + op.kw);
  const int n = round_up(op.oh * L, V);  // window starts, in whole vectors
  buf.assign((size_t)2 * n + op.kw + V, -INFINITY);
  float* rows = buf.data();              // [oh, L] and slack for the last windows
  float* starts = rows + n + op.kw + V;  // [n]: each window start's max
  for (int c = 0; c < op.c; ++c) {
    const float* ac = a + (size_t)c * op.h * op.w;
    for (int y = 0; y < op.oh; ++y) {
      const int y0 = std::max(y * op.sh - op.ph, 0);
      const int y1 = std::min(y * op.sh - op.ph + op.kh, op.h);
      float* r = rows + (size_t)y * L + op.pw;
      if (y0 >= y1) {  // a window over padding only (PyTorch's checks rule it out)
        std::fill(r, r + op.w, -INFINITY);
        continue;
      }
      std::memcpy(r, ac + (size_t)y0 * op.w, sizeof(float) * op.w);
      for (int i = y0 + 1; i < y1; ++i) max_into(r, ac + (size_t)i * op.w, op.w);
    }
    std::memcpy(starts, rows, sizeof(float) * n);
    for (int j = 1; j < op.kw; ++j) max_into(starts, rows + j, n);
    float* oc = o + (size_t)c * op.oh * op.ow;
    for (int y = 0; y < op.oh; ++y)
      for (int x = 0; x < op.ow; ++x) oc[(size_t)y * op.ow + x] = starts[(size_t)y * L + x * op.sw];
  }
}

// Average over each window, clamped to the input, summed row by row in PyTorch's order;
// the divisor as PyTorch's avg_pool2d (count_include_pad counts the padding, not what a
// ceil-mode window hangs over).
void op_avgpool(const DyveOp& op, const float* a, float* o) {
  for (int c = 0; c < op.c; ++c) {
    const float* ac = a + (size_t)c * op.h * op.w;
    for (int y = 0; y < op.oh; ++y) {
      int y0 = y * op.sh - op.ph;
      int y1 = std::min(y0 + op.kh, op.h + op.ph);
      const int hsize = y1 - y0;
      y0 = std::max(y0, 0), y1 = std::min(y1, op.h);
      for (int x = 0; x < op.ow; ++x) {
        int x0 = x * op.sw - op.pw;
        int x1 = std::min(x0 + op.kw, op.w + op.pw);
        const int size = hsize * (x1 - x0);
        x0 = std::max(x0, 0), x1 = std::min(x1, op.w);
        float acc = 0.f;
        for (int i = y0; i < y1; ++i)
          for (int j = x0; j < x1; ++j) acc += ac[i * op.w + j];
        const float div = op.count_include_pad ? size : (y1 - y0) * (x1 - x0);
        o[((size_t)c * op.oh + y) * op.ow + x] = acc / div;
      }
    }
  }
}

// Average pooling whose windows tile the map exactly (no padding, stride = window: a
// D2NN controller's adaptive pooling): each window's rows are summed into a row of w
// floats (vectorised over the row), then each run of kw of them, scaled.
void op_pool_tiled(const DyveOp& op, const float* a, float* o) {
  thread_local std::vector<float> row;
  row.resize(op.w);
  const float scale = 1.f / (float)(op.kh * op.kw);
  for (int c = 0; c < op.c; ++c) {
    const float* ac = a + (size_t)c * op.h * op.w;
    for (int y = 0; y < op.oh; ++y) {
      const float* r0 = ac + (size_t)y * op.kh * op.w;
      std::memcpy(row.data(), r0, sizeof(float) * op.w);
      for (int i = 1; i < op.kh; ++i)
        for (int x = 0; x < op.w; ++x) row[x] += r0[(size_t)i * op.w + x];
      float* oy = o + ((size_t)c * op.oh + y) * op.ow;
      for (int x = 0; x < op.ow; ++x) {
        float acc = 0.f;
        for (int j = 0; j < op.kw; ++j) acc += row[x * op.kw + j];
        oy[x] = acc * scale;
      }
    }
  }
}

bool tiles(const DyveOp& op) {
  return op.ph == 0 && op.pw == 0 && op.sh == op.kh && op.sw == op.kw &&
         op.oh * op.kh == op.h && op.ow * op.kw == op.w;
}

// Runs `op` for sample i; false when the sample leaves the network here (an exit).
bool op_run(const DyveProgram* p, const DyveOp& op, float* const* bp, Scratch& sc, int i,
            uint8_t* flags) {
  const float* a = bp[op.a];
  float* o = bp[op.out];
  const size_t size = (size_t)op.c * op.h * op.w;
  switch (op.kind) {
    case DYVE_OP_SITE: {
      const size_t row = (size_t)op.slot * p->n + i;
      double* st = p->stats + row * DYVE_NSTAT;
      std::memset(st, 0, sizeof(double) * DYVE_NSTAT);
      Sample(*op.site, sc, a, o, st, p->changed + row).run();
      break;
    }
    case DYVE_OP_GATED: {
      const size_t row = (size_t)op.slot * p->n + i;
      double* st = p->stats + row * DYVE_NSTAT;
      std::memset(st, 0, sizeof(double) * DYVE_NSTAT);
      gated_run(*op.gate, op.h, op.w, op.oc, op.oh, op.ow, a, o, sc, st, p->changed + row);
      break;
    }
    case DYVE_OP_ADD: {
      const float* b = bp[op.b];
      for (size_t j = 0; j < size; ++j) o[j] = a[j] + b[j];
      break;
    }
    case DYVE_OP_ADD_RELU: {
      const float* b = bp[op.b];
      for (size_t j = 0; j < size; ++j) {
        const float v = a[j] + b[j];
        o[j] = v < 0.f ? 0.f : v;
      }
      break;
    }
    case DYVE_OP_RELU:
      for (size_t j = 0; j < size; ++j) o[j] = a[j] < 0.f ? 0.f : a[j];
      break;
    case DYVE_OP_MAXPOOL:
      op_maxpool(op, a, o);
      break;
    case DYVE_OP_AVGPOOL:
      if (tiles(op))
        op_pool_tiled(op, a, o);
      else
        op_avgpool(op, a, o);
      break;
    case DYVE_OP_MEAN:
      channel_means(a, op.c, op.h * op.w, o);
      break;
    case DYVE_OP_CONCAT: {
      const size_t plane = (size_t)op.h * op.w;
      std::memcpy(o, a, sizeof(float) * op.c * plane);
      std::memcpy(o + op.c * plane, bp[op.b], sizeof(float) * (op.oc - op.c) * plane);
      break;
    }
    case DYVE_OP_SHORTCUT:
      option_a(a, op.c, op.h, op.w, op.sh, op.sw, op.ph, o, op.oh, op.ow);
      break;
    case DYVE_OP_EXIT: {
      const size_t row = (size_t)op.slot * p->n + i;
      double* st = p->stats + row * DYVE_NSTAT;
      std::memset(st, 0, sizeof(double) * DYVE_NSTAT);
      if (!exit_run(*op.exit, a, st, p->changed + row)) break;
      std::memcpy(bp[p->out_buf], a, sizeof(float) * op.c);  // its output: the head's logits
      return false;
    }
    case DYVE_OP_ROUTE:
      route_run(*op.route, a, flags);
      break;
    case DYVE_OP_FLAG:
      flags[op.flag] &= flags[op.flag2];
      break;
    case DYVE_OP_SELECT: {
      const float* from = flags[op.flag] ? bp[op.b] : a;
      if (from != o) std::memcpy(o, from, sizeof(float) * size);
      break;
    }
    case DYVE_OP_PERMUTE:
      for (int j = 0; j < op.oc; ++j) o[j] = a[op.index[j]];
      break;
  }
  return true;
}

// A sample that left before `op`: the op's statistics row (if it has one) says nothing ran.
void op_skip(const DyveProgram* p, const DyveOp& op, int i) {
  if (op.kind != DYVE_OP_SITE && op.kind != DYVE_OP_GATED && op.kind != DYVE_OP_EXIT) return;
  const size_t row = (size_t)op.slot * p->n + i;
  std::memset(p->stats + row * DYVE_NSTAT, 0, sizeof(double) * DYVE_NSTAT);
  p->changed[row] = 0;
}

// `op` does not run for sample i (a flag of its is clear): as op_skip, and a route clears
// the flags it owns, an op with a default fills its output with it.
void op_off(const DyveProgram* p, const DyveOp& op, float* const* bp, uint8_t* flags, int i) {
  op_skip(p, op, i);
  if (op.kind == DYVE_OP_ROUTE) route_off(*op.route, flags);
  if (op.fills) std::fill_n(bp[op.out], (size_t)op.oc * op.oh * op.ow, op.fill);
}

// Samples per group when automatic: enough to share each weight load, few enough that
// the group's buffers stay in a core's L2 (about 1 MiB).
int auto_group(size_t arena_floats) {
  const size_t budget = (size_t)256 * 1024;  // floats
  return (int)std::max<size_t>(1, std::min<size_t>(8, budget / std::max<size_t>(arena_floats, 1)));
}

void program_range(const DyveProgram* p, int lo, int hi) {
  Scratch* sc = acquire();
  std::vector<size_t> at(p->nbuf + 1, 0);  // arena offsets, 16-float aligned
  for (int k = 0; k < p->nbuf; ++k) at[k + 1] = at[k] + (size_t)round_up((int)p->floats[k], V);
  const size_t per = at[p->nbuf];
  const int group = std::min(hi - lo, p->group > 0 ? p->group : auto_group(per));
  if (sc->arena.size() < per * group) sc->arena.resize(per * group);
  std::vector<float*> bp((size_t)p->nbuf * group);  // sample j's buffers at bp[j * nbuf]
  std::vector<uint8_t> live(group);                  // sample j has not left at an exit
  const int nf = p->nflags;
  std::vector<uint8_t> flags((size_t)nf * group);    // sample j's at flags[j * nf]
  for (int j = 0; j < group; ++j)
    for (int k = 0; k < p->nbuf; ++k) bp[(size_t)j * p->nbuf + k] = sc->arena.data() + j * per + at[k];
  for (int i0 = lo; i0 < hi; i0 += group) {
    const int g = std::min(group, hi - i0);
    for (int j = 0; j < g; ++j) {
      float** b = &bp[(size_t)j * p->nbuf];
      b[p->in_buf] = const_cast<float*>(p->x) + (size_t)(i0 + j) * p->floats[p->in_buf];
      b[p->out_buf] = p->y + (size_t)(i0 + j) * p->floats[p->out_buf];
      live[j] = 1;
      if (nf > 0) std::memcpy(&flags[(size_t)j * nf], p->flag_init, nf);
    }
    auto step = [&](const DyveOp& op) {
      for (int j = 0; j < g; ++j) {
        float* const* b = &bp[(size_t)j * p->nbuf];
        uint8_t* f = flags.data() + (size_t)j * nf;
        if (!live[j])
          op_skip(p, op, i0 + j);
        else if ((op.when >= 0 && !f[op.when]) || (op.when2 >= 0 && !f[op.when2]))
          op_off(p, op, b, f, i0 + j);
        else
          live[j] = op_run(p, op, b, *sc, i0 + j, f);
      }
    };
    for (int k = 0; k < p->nops; ++k) {
      if (p->seconds == nullptr) {
        step(p->ops[k]);
        continue;
      }
      const auto t0 = std::chrono::steady_clock::now();
      step(p->ops[k]);
      p->seconds[k] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
  }
  release(sc);
}

}  // namespace

extern "C" int dyve_program(const DyveProgram* p) {
  if (p->n < 0 || p->nops < 1 || p->in_buf == p->out_buf) return 1;
  if (p->nflags < 0 || (p->nflags > 0 && p->flag_init == nullptr)) return 2;
  auto bad_flag = [p](int f, bool optional) { return f >= p->nflags || (f < 0 && !optional); };
  for (int k = 0; k < p->nops; ++k) {
    const DyveOp& op = p->ops[k];
    if (op.kind < DYVE_OP_SITE || op.kind > DYVE_OP_ADD_RELU) return 3;
    if (bad_flag(op.when, true) || bad_flag(op.when2, true)) return 4;
    if (op.kind == DYVE_OP_ROUTE) {
      if (op.route == nullptr || op.route->actions != op.c || op.route->actions > 31) return 3;
      if (op.route->fixed >= op.route->actions || (op.route->fixed < 0 && op.route->pen == nullptr))
        return 3;
      for (int t = 0; t < op.route->ntargets; ++t)
        if (bad_flag(op.route->flags[t], false)) return 4;
    }
    if (op.kind == DYVE_OP_FLAG && (bad_flag(op.flag, false) || bad_flag(op.flag2, false))) return 4;
    if (op.kind == DYVE_OP_SELECT && (bad_flag(op.flag, false) || op.b < 0)) return 4;
    if (op.kind == DYVE_OP_PERMUTE && op.index == nullptr) return 3;
    if (op.out == p->in_buf || (op.kind == DYVE_OP_SITE && op.site == nullptr)) return 3;
    if (op.kind == DYVE_OP_GATED && (op.gate == nullptr || op.gate->conv1 == nullptr ||
                                     op.gate->conv2 == nullptr)) return 3;
    if (op.kind == DYVE_OP_EXIT && (op.exit == nullptr || op.exit->classes != op.c)) return 3;
  }
  const int threads = p->seconds != nullptr ? 1 : p->threads;  // a profile runs on one
  split(p->n, threads, [p](int lo, int hi) { program_range(p, lo, hi); });
  return 0;
}

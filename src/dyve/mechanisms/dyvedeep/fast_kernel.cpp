// DyVEDeep's knobs on one conv/linear site, really skipping work (the "fast" back-end).
//
// Built on first use by dyve/mechanisms/dyvedeep/native.py (g++ -O3 -march=native), as one
// translation unit with the files that follow it in native.SOURCES: fast_dense.cpp (the
// dense tiles), fast_neurons.cpp (per-neuron work: SPET, SDSS), fast_gated.cpp (LC-Net's
// gated blocks), fast_exit.cpp (early exits' decisions) and fast_program.cpp (a whole
// network per call). Called through ctypes: one call per site and batch here, or one call
// per network and batch through fast_program.cpp. It computes what the emulation in
// kernel.py computes (same knob semantics), but only the work it decides to do, and
// counts that work. Layout per sample (see docs/methods/dyvedeep.md, "fast back-end"):
//
//   * SFMA: per input channel mean and statistic; approximated channels are dropped
//     from the im2col matrices and the weights (K' = kept channels x kh x kw terms) and
//     their constant contribution goes into a per-sample bias.
//   * colT [K'][positions]: term-major im2col. Dense sites run a register-tiled GEMM on it
//     (8 output channels x 48 positions with AVX-512); SPET sites run their check pass on it (each
//     filter's own check terms, vectorised over 64 positions).
//   * patch [position][K']: position-major im2col rows, built lazily, for per-neuron work:
//     the neurons SPET keeps are completed by a dot product over all K' terms (the check
//     terms are recomputed: the check terms differ per filter, so they cannot be skipped
//     in a shared layout; the cost report counts them as "recomputed").
//   * SDSS: grid positions first (as a list through the same passes), then per channel
//     and off-grid position: interpolate, or compute that neuron alone.
//   * SPET's exact check is not applied here: it is lossless (the ReLU gives the same 0),
//     so outputs are unchanged, and in this layout it would cost a second pass.
//
// Portable C++17 with GCC vector extensions: vectors of V floats (16 with AVX-512, 8 with
// AVX2, 4 otherwise) depending on the -march the library was built for.

#include <algorithm>
#include <array>
#include <chrono>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace {

// V: floats per vector, the widest the target has (GCC splits wider generic vectors through
// the stack: 64-byte vectors on AVX2 ran 7-10x slower than AVX-512, kernel_ab --base-arch).
#if defined(__AVX512F__)
constexpr int V = 16;
#elif defined(__AVX__)
constexpr int V = 8;
#else
constexpr int V = 4;
#endif
typedef float vf __attribute__((vector_size(4 * V)));
typedef float vfu __attribute__((vector_size(4 * V), aligned(4)));
typedef int32_t vi __attribute__((vector_size(4 * V)));
// kernel-row runs are padded to this many floats (native.py pads them; every V divides it)
constexpr int RUN_PAD = 16;

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
// a - 0 is a for every float (-0 included), so this folds to one broadcast; `vf{} + a`
// does not (0 + -0 is +0): it cost a scalar add and a shuffle per weight (perf annotate).
inline vf splat(float a) { return a - vf{}; }

// Tile sizes: a tile's accumulators stay in the vector registers (TF filters x TPV vectors
// of positions; TP positions x TV vectors of filters). AVX-512 has 32 registers, AVX2 and SSE
// 16. With AVX-512, 8 x 3 (24 accumulators; 11 loads per 24 products) ran ResNet-56 4 % and
// the Caffe net 8 % faster than 8 x 2 (18 loads per 16 products), and 4 x 6 ran ResNet-56
// 8 % slower (benchmarks/NOTES.md, session 25).
#if defined(__AVX512F__)
constexpr int TF = 8, TPV = 3, TP = 8, TV = 2;
#else
constexpr int TF = 6, TPV = 2, TP = 6, TV = 2;
#endif
// On maps of fewer than TP positions (2 x 2), the filter-vectorised tile is SP positions x
// SV vectors of filters instead, so that no lane computes a repeated position.
#if defined(__AVX512F__)
constexpr int SP = 4, SV = 4;
#else
constexpr int SP = 4, SV = 2;
#endif
// Sum of the lanes: halves added until 4 lanes remain, then (0 + 2) + (1 + 3).
typedef float vf4 __attribute__((vector_size(16)));
inline float hsum(vf v) {
#if defined(__AVX512F__)
  typedef float vf8 __attribute__((vector_size(32)));
  const vf8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const vf4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
#elif defined(__AVX__)
  const vf4 b = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
  const vf4 b = v;
#endif
  return (b[0] + b[2]) + (b[1] + b[3]);
}
inline int round_up(int a, int b) { return (a + b - 1) / b * b; }

// Bit l set when lane l of v is not <= thr (SPET keeps the neuron; NaN is kept, as in the
// emulation's `partial <= threshold` stop test).
#if defined(__AVX512F__)
inline uint32_t kept_lanes(vf v, float thr) {
  return _mm512_cmp_ps_mask((__m512)v, _mm512_set1_ps(thr), _CMP_NLE_UQ);
}
#else
inline uint32_t kept_lanes(vf v, float thr) {
  const vi stop = v <= splat(thr);
  uint32_t m = 0;
  for (int l = 0; l < V; ++l) m |= (uint32_t)(stop[l] == 0) << l;
  return m;
}
#endif

}  // namespace

extern "C" {

// Everything the kernel needs about one site; filled by native.py (ctypes.Structure).
struct DyveSite {
  int n, cin, h, w, cout, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo;
  const float* x;        // [n, cin, h, w]
  const float* weight;   // [cout, cin*kh*kw], BN folded
  const float* bias;     // [cout]
  const float* wsum;     // [cout, cin] kernel sums (SFMA)
  const int32_t* top_ci;   // [cout, m] input channel of each filter's check terms
  const int32_t* top_tap;  // [cout, m] their tap ky*kw+kx
  const float* top_w;      // [cout, m] their weights
  const float* wr_full;    // [cout, kh, L16]: weights in kernel-row runs, all channels kept
  int m;
  int use_spet;
  float spet;
  int use_sdss;
  float sdss;
  int sdss_stride;
  int use_sfma;
  float sfma;
  int statistic;  // 0: variance, 1: range
  int relu;
  int threads;
  float* out;      // [n, cout, ho, wo]
  double* stats;   // [n, DYVE_NSTAT]
  uint8_t* changed;  // [n]: 1 when any knob acted on the sample (a torch.bool tensor)
  int32_t* top_off;  // [cout, m] check-term offsets when every channel is kept (dyve_prepare)
  int32_t* top_rel;  // [cout, m] the same in the neuron layout
  const int32_t* top_count;  // [cout, cin] how many of each filter's check terms are on each channel
  const float* weight_t;     // [cin*kh*kw, cout]: the weights term-major (plane passes)
};

// Columns of `stats`, per sample.
enum {
  ST_MACS = 0,        // multiply-accumulates executed
  ST_OPS,             // scalar operations executed (2 x MACs + overhead)
  ST_OVERHEAD,        // SFMA statistics and constants, SPET compares, SDSS tests/averages
  ST_STOPPED,         // neurons SPET stopped
  ST_INTERPOLATED,    // neurons SDSS interpolated
  ST_APPROXIMATED,    // input channels SFMA approximated
  ST_RECOMPUTED,      // check-term MACs done again by completed neurons
  ST_CHECKED,         // SPET checks made
  ST_WASTED,          // MACs of stopped neurons completed with their plane vector
  DYVE_NSTAT
};

int dyve_nstat() { return DYVE_NSTAT; }
int dyve_abi() { return 10; }
// the OpenMP version the library was built with (0: without; threads of its own)
int dyve_openmp() {
#if defined(_OPENMP)
  return _OPENMP;
#else
  return 0;
#endif
}

}  // extern "C"

namespace {

// per-neuron dot products cost about this many times a vectorised lane (measured, NOTES.md)
constexpr float NEURON_COST = 1.0f;

struct Scratch {
  std::vector<float> xq, xt, wr, topw, bias, partial;
  std::vector<float> wc;      // subset mode on small maps: the kept filters' weights, compact
  std::vector<int32_t> wcofs;  // ... and where each term's row starts in wc
  std::vector<int32_t> fat;    // subset mode on the site's own table: filter -> output channel
  std::vector<float> arena;  // a whole-network program's buffers (fast_program.cpp)
  std::vector<int32_t> kept, slot, toff, wofs, ttop, trel, flat, active, vecs, tap_off, tap_rel, xbase;
  std::vector<uint32_t> valid;  // per plane vector: bit l set when lane l is an output position
  std::array<int, 4> flat_for{-1, -1, -1, -1};  // the geometry flat and valid were built for
  std::vector<uint8_t> wr_ok;   // per filter: its kernel-row weights are in wr
  std::vector<int32_t> dropped, tkept;  // zeroed mode: channels SFMA dropped, check terms kept
  std::vector<int32_t> keep, pending, npending;  // neuron mode: kept / listed neurons
  std::vector<int> ntop;
  std::vector<float> gate_p, gate_s, gate_h, gate_t;  // a gated block (fast_gated.cpp)
  std::vector<int32_t> gate_kept;
};

// Scratch buffers are pooled, not thread_local: TLS in a dlopen'ed library goes through
// __tls_get_addr's slow path (measured: ~8 % of a batch-1 call).
std::mutex pool_mu;
std::vector<Scratch*> pool;

Scratch* acquire() {
  std::lock_guard<std::mutex> lock(pool_mu);
  if (pool.empty()) return new Scratch();
  Scratch* sc = pool.back();
  pool.pop_back();
  return sc;
}

void release(Scratch* sc) {
  std::lock_guard<std::mutex> lock(pool_mu);
  pool.push_back(sc);
}

struct Sample {
  const DyveSite& s;
  Scratch& sc;
  const float* x;   // this sample's input [cin, h, w]
  float* out;       // its output [cout, ho, wo]
  double* st;       // its statistics [DYVE_NSTAT] (zeroed by the caller)
  uint8_t* changed;  // its "any knob acted" flag
  int nk = 0, k2 = 0, P = 0, K = 0;
  // Zeroed mode (SPET sites on small maps): the channels SFMA drops stay in every layout as
  // zeros instead of being compacted away, so no per-sample table or weight re-layout is
  // needed; the MACs spent on the zeros are counted as wasted. nkept: channels really kept.
  bool zeroed = false;
  int nkept = 0;
  int Hp = 0, Wp = 0, Hq = 0, Wq = 0, PQ = 0, NF = 0, L = 0, L16 = 0;
  const float* wr = nullptr;  // [cout][kh][L16] the same in kernel-row runs (lazy per filter)
  const int32_t* ttop = nullptr;  // [cout][m] each filter's check terms: plane offsets,
  const int32_t* trel = nullptr;  // neuron-layout offsets,
  const float* topw = nullptr;    // weights (sc.ntop[o] of them per filter)
  // Subset mode (LC-Net's gated blocks, fast_gated.cpp; plane layout, every knob off):
  // in_ids (in_n of them): the input channels x holds, compactly (plane j is channel
  // in_ids[j]'s); fl (nf of them): the filters computed, written compactly (output channel
  // u is filter fl[u]); each output is scaled by osc[u] (or oscale) before the ReLU.
  const int32_t* in_ids = nullptr;
  int in_n = 0;
  const int32_t* fl = nullptr;
  int nf = 0;
  const float* osc = nullptr;
  float oscale = 1.f;

  Sample(const DyveSite& site, Scratch& scratch, const float* x_, float* out_, double* st_,
         uint8_t* changed_)
      : s(site), sc(scratch), x(x_), out(out_), st(st_), changed(changed_) {
    k2 = s.kh * s.kw;
    P = s.ho * s.wo;
    Hp = s.h + 2 * s.ph;
    Wp = s.w + 2 * s.pw;
    Hq = (Hp + s.sh - 1) / s.sh;
    Wq = (Wp + s.sw - 1) / s.sw;
    PQ = Hq * Wq;
    NF = s.ho * Wq;
  }

  // SFMA decisions, the per-sample bias and the kept channels.
  void channels() {
    const int hw = s.h * s.w;
    sc.bias.assign(s.bias, s.bias + s.cout);
    if (in_ids != nullptr) {  // subset mode: the given channels, no SFMA
      sc.kept.assign(in_ids, in_ids + in_n);
      nk = nkept = in_n;
      K = nk * k2;
      return;
    }
    sc.kept.clear();
    sc.slot.assign(s.cin, -1);
    int approx = 0;
    for (int c = 0; c < s.cin; ++c) {
      bool drop = false;
      double mean = 0.0;
      if (s.use_sfma) {
        const float* xc = x + (size_t)c * hw;
        vf sum{}, sq{}, mx = splat(xc[0]), mn = splat(xc[0]);
        int j = 0;
        for (; j + V <= hw; j += V) {
          const vf v = load(xc + j);
          sum += v;
          sq += v * v;
          mx = v > mx ? v : mx;
          mn = v < mn ? v : mn;
        }
        float fs = hsum(sum), fq = hsum(sq), fmx = mx[0], fmn = mn[0];
        for (int l = 1; l < V; ++l) fmx = std::max(fmx, mx[l]), fmn = std::min(fmn, mn[l]);
        for (; j < hw; ++j) {
          fs += xc[j];
          fq += xc[j] * xc[j];
          fmx = std::max(fmx, xc[j]);
          fmn = std::min(fmn, xc[j]);
        }
        const float m = fs / hw;
        mean = m;
        const float stat = s.statistic == 0 ? std::max(0.f, fq / hw - m * m) : fmx - fmn;
        drop = stat <= s.sfma;
      }
      if (drop) {
        ++approx;
        for (int o = 0; o < s.cout; ++o) sc.bias[o] += (float)mean * s.wsum[(size_t)o * s.cin + c];
      } else {
        sc.slot[c] = (int)sc.kept.size();
        sc.kept.push_back(c);
      }
    }
    nk = nkept = (int)sc.kept.size();
    // zeroed mode when the check pass is short (few 64-position blocks) compared with the
    // share of channels dropped: then re-laying out tables costs more than the zeros
    const bool plane = !(s.use_sdss && P > 1) && P > 1;
    const int blocks = (NF + 4 * V - 1) / (4 * V);
    if (s.use_spet && plane && nk < s.cin && s.top_off != nullptr && s.top_count != nullptr &&
        blocks * (s.cin - nk) <= 2 * s.cin) {
      zeroed = true;
      sc.dropped.clear();
      for (int c = 0; c < s.cin; ++c)
        if (sc.slot[c] < 0) sc.dropped.push_back(c);
      sc.kept.resize(s.cin);
      for (int c = 0; c < s.cin; ++c) sc.kept[c] = sc.slot[c] = c;
      nk = s.cin;
    }
    K = nk * k2;
    if (s.use_sfma) {
      const double per_channel = s.statistic == 0 ? 5.0 * hw + 1 : 2.0 * hw + 2;
      const double per_approx = s.statistic == 0 ? 0.0 : 2.0 * hw;
      st[ST_OVERHEAD] += s.cin * per_channel + approx * (per_approx + 2.0 * s.cout);
    }
    st[ST_APPROXIMATED] = approx;
  }

  // Per tap (ky, kx): offset in the phase-split planes of channel 0, and in the
  // channels-last layout (in positions); a term's offset adds its channel's.
  void taps() {
    sc.tap_off.resize(k2);
    sc.tap_rel.resize(k2);
    for (int ky = 0; ky < s.kh; ++ky)
      for (int kx = 0; kx < s.kw; ++kx) {
        const int dy = ky * s.dh, dx = kx * s.dw;
        sc.tap_off[ky * s.kw + kx] =
            ((dy % s.sh) * s.sw + dx % s.sw) * PQ + (dy / s.sh) * Wq + dx / s.sw;
        sc.tap_rel[ky * s.kw + kx] = dy * Wp + dx;
      }
  }

  // Phase-split zero-padded planes of the kept channels (plane layout) and the weights.
  void planes() {
    const size_t size = (size_t)nk * s.sh * s.sw * PQ + PQ + 8 * V;
    sc.xq.assign(size, 0.f);
    const size_t cstride = (size_t)s.sh * s.sw * PQ;
    size_t next_drop = 0;  // zeroed mode: dropped channels keep their zero planes
    for (int j = 0; j < nk; ++j) {
      if (zeroed && next_drop < sc.dropped.size() && sc.dropped[next_drop] == j) {
        ++next_drop;
        continue;
      }
      const float* xc = x + (size_t)(in_ids != nullptr ? j : sc.kept[j]) * s.h * s.w;
      if (s.sh == 1 && s.sw == 1) {  // one phase: rows land whole, no divisions
        for (int iy = 0; iy < s.h; ++iy)
          std::memcpy(&sc.xq[j * cstride + (size_t)(iy + s.ph) * Wq + s.pw],
                      xc + (size_t)iy * s.w, sizeof(float) * s.w);
        continue;
      }
      for (int iy = 0; iy < s.h; ++iy) {
        const int py = iy + s.ph;
        float* dst = &sc.xq[j * cstride + (size_t)(py % s.sh) * s.sw * PQ + (py / s.sh) * Wq];
        const float* src = xc + (size_t)iy * s.w;
        if (s.sw == 1) {  // one phase: the row is contiguous
          std::memcpy(dst + s.pw, src, sizeof(float) * s.w);
          continue;
        }
        for (int fx = 0; fx < s.sw; ++fx) {  // input columns of one phase: stride sw
          const int ix0 = ((fx - s.pw) % s.sw + s.sw) % s.sw;
          float* d = dst + (size_t)((ix0 + s.pw) % s.sw) * PQ + (ix0 + s.pw) / s.sw;
          for (int ix = ix0; ix < s.w; ix += s.sw) *d++ = src[ix];
        }
      }
    }
    // per term k of the kept channels: its plane offset, and where its weights for every
    // filter start in the term-major weights (no per-sample weight copy)
    sc.toff.resize(std::max(K, 1));
    sc.wofs.resize(std::max(K, 1));
    for (int j = 0; j < nk; ++j)
      for (int t = 0; t < k2; ++t) {
        sc.toff[j * k2 + t] = (int)(j * cstride) + sc.tap_off[t];
        sc.wofs[j * k2 + t] = (sc.kept[j] * k2 + t) * s.cout;
      }
    // flat index i = r * Wq + c of the planes -> output position (-1: beyond the map); kept
    // while the geometry is the same (the sites of a stage share it)
    const std::array<int, 4> key{s.ho, s.wo, Wq, NF};
    if (sc.flat_for != key) {
      sc.flat.assign(round_up(NF, 4 * V) + 4 * V, -1);
      sc.valid.assign(sc.flat.size() / V, 0u);
      for (int r = 0; r < s.ho; ++r)
        for (int c = 0; c < s.wo; ++c) {
          const int j = r * Wq + c;
          sc.flat[j] = r * s.wo + c;
          sc.valid[j / V] |= 1u << (j % V);
        }
      sc.flat_for = key;
    }
  }

  // Channels-last padded input (neuron layout), built when the first neuron is computed
  // alone; the weights in runs of kernel rows come per filter from filter_rows().
  bool have_rows = false;
  void rows() {
    if (have_rows) return;
    have_rows = true;
    L = s.kw * nk;
    L16 = round_up(std::max(L, 1), RUN_PAD);  // as wr_full's runs (native.py)
    sc.xt.assign((size_t)Hp * Wp * nk + L16 + V, 0.f);
    const size_t hw = (size_t)s.h * s.w;
    for (int iy = 0; iy < s.h; ++iy) {  // row by row: the destination row stays in L1
      float* d = &sc.xt[((size_t)(iy + s.ph) * Wp + s.pw) * nk];
      size_t next_drop = 0;  // zeroed mode: dropped channels stay zero
      for (int j = 0; j < nk; ++j) {
        if (zeroed && next_drop < sc.dropped.size() && sc.dropped[next_drop] == j) {
          ++next_drop;
          continue;
        }
        const float* src = x + sc.kept[j] * hw + (size_t)iy * s.w;
        for (int ix = 0; ix < s.w; ++ix) d[(size_t)ix * nk + j] = src[ix];
      }
    }
    sc.xbase.resize(P);
    for (int r = 0; r < s.ho; ++r)
      for (int c = 0; c < s.wo; ++c) sc.xbase[r * s.wo + c] = (r * s.sh * Wp + c * s.sw) * nk;
    if (nk == s.cin) {
      wr = s.wr_full;
      return;
    }
    sc.wr.resize((size_t)s.cout * s.kh * L16);
    sc.wr_ok.assign(s.cout, 0);
    wr = sc.wr.data();
  }

  // Filter o's weights in kernel-row runs of the kept channels (laid out on first use: a
  // sample completes neurons of only some filters).
  const float* filter_rows(int o) {
    float* w = const_cast<float*>(wr) + (size_t)o * s.kh * L16;
    if (nk == s.cin || sc.wr_ok[o]) return w;
    sc.wr_ok[o] = 1;
    std::fill(w, w + (size_t)s.kh * L16, 0.f);
    const int run = s.kw * s.cin;  // from the all-channel runs: a gather per kernel tap
    const int run16 = round_up(run, RUN_PAD);
    const int32_t* kept = sc.kept.data();
    for (int ky = 0; ky < s.kh; ++ky)
      for (int kx = 0; kx < s.kw; ++kx) {
        const float* src = s.wr_full + ((size_t)o * s.kh + ky) * run16 + kx * s.cin;
        float* dst = w + ky * L16 + kx * nk;
        for (int j = 0; j < nk; ++j) dst[j] = src[kept[j]];
      }
    return w;
  }

  // Each filter's check terms among the kept channels: plane offsets, neuron offsets
  // (only in neuron mode), weights. With every channel kept they are the site's prepared
  // table (dyve_prepare); otherwise rebuilt for this sample's kept channels.
  void checks(bool neuron_mode) {
    sc.ntop.assign(s.cout, s.m);
    if (nk == s.cin && s.top_off != nullptr) {
      ttop = s.top_off, trel = s.top_rel, topw = s.top_w;
      if (zeroed) {  // the check terms on real (kept) channels, for the cost statistics
        sc.tkept.assign(s.cout, s.m);
        for (int o = 0; o < s.cout; ++o)
          for (int c : sc.dropped) sc.tkept[o] -= s.top_count[(size_t)o * s.cin + c];
      }
      return;
    }
    const size_t cstride = (size_t)s.sh * s.sw * PQ;
    sc.ttop.resize((size_t)s.cout * s.m);
    sc.trel.resize(neuron_mode ? (size_t)s.cout * s.m : 0);
    sc.topw.resize((size_t)s.cout * s.m);
    for (int o = 0; o < s.cout; ++o) {
      // branch-free: every term is written, and kept only when its channel is (the drop
      // pattern is random, so a branch per term mispredicts)
      const size_t base = (size_t)o * s.m;
      int32_t* off = &sc.ttop[base];
      float* w = &sc.topw[base];
      int t = 0;
      for (int q = 0; q < s.m; ++q) {
        const int j = sc.slot[s.top_ci[base + q]], tap = s.top_tap[base + q];
        off[t] = j * (int)cstride + sc.tap_off[tap];
        w[t] = s.top_w[base + q];
        if (neuron_mode) sc.trel[base + t] = sc.tap_rel[tap] * nk + j;
        t += j >= 0;
      }
      sc.ntop[o] = t;
    }
    ttop = sc.ttop.data(), trel = sc.trel.data(), topw = sc.topw.data();
  }

  // The site's check-term table with every channel kept (see checks()).
  void prepare(int32_t* off, int32_t* rel) {
    const size_t cstride = (size_t)s.sh * s.sw * PQ;
    for (size_t q = 0; q < (size_t)s.cout * s.m; ++q) {
      off[q] = (int)(s.top_ci[q] * cstride) + sc.tap_off[s.top_tap[q]];
      rel[q] = sc.tap_rel[s.top_tap[q]] * s.cin + s.top_ci[q];
    }
  }

  inline float finish(float v) const { return s.relu && v < 0.f ? 0.f : v; }
  inline vf finish(vf v) const { return s.relu ? (v < vf{} ? vf{} : v) : v; }

  // The dense passes (plane tiles, filter-vectorised tiles): fast_dense.cpp.
  template <int NO>
  void tile(const float* wt, const int* wofs, int u, int i, vf (&acc)[TF][TPV]) const;
  template <int NO>
  void tile_upto(const float* wt, const int* wofs, int u, int no, int i,
                 vf (&acc)[TF][TPV]) const;
  void plane_out(float* oc, float b, float scale, int i, const vf (&acc)[TPV]) const;
  template <int NP, int MV>
  void filters_out(int u, int p0, int np, const vf (&acc)[NP][MV], int v);
  std::pair<const float*, const int*> filter_table(int nout);
  template <int NP, int NV, int MV, bool ROW, int PAT>
  void tile_filters(const float* wt, const int* wofs, int o0, const int* q,
                    vf (&acc)[NP][MV]) const;
  template <int NP, int NV, int MV>
  void tile_filters_upto(const float* wt, const int* wofs, int o0, const int* q, int pat,
                         bool row, int nv, vf (&acc)[NP][MV]) const;
  template <int NP>
  int tap_pattern(int p0, int np, bool row) const;
  void dense_filters(int nout);
  template <bool WHOLE>
  void dense_filters_on(int nout, const float* wt, const int* wofs, int width);
  template <bool WHOLE, int NP, int MV>
  void dense_filters_tiled(int nout, const float* wt, const int* wofs, int width);
  void dense();

  // Per-neuron work (SPET's check pass and completion, SDSS, neuron mode): fast_neurons.cpp.
  template <int G>
  void neuron_group(const float* wo, const int32_t* ps, float* oc, float b);
  void neurons(int o, const int32_t* ps, int n);
  void vectors(int o, const int32_t* vs, int n, const float* part);
  void spet();
  void some(int o, const int32_t* ps, int n);
  void neuron_mode();

  void run() {
    channels();
    taps();
    const bool plane = !(s.use_sdss && P > 1) && P > 1;
    if (plane) planes();
    if (s.use_spet) checks(!plane);
    if (!plane)
      neuron_mode();
    else if (s.use_spet)
      spet();
    else
      dense();
    st[ST_OVERHEAD] += st[ST_CHECKED];
    st[ST_OPS] = 2.0 * st[ST_MACS] + st[ST_OVERHEAD];
    *changed = st[ST_APPROXIMATED] + st[ST_STOPPED] + st[ST_INTERPOLATED] > 0;
  }
};

void run_range(const DyveSite* s, int lo, int hi) {
  Scratch* sc = acquire();
  for (int i = lo; i < hi; ++i) {
    double* st = s->stats + (size_t)i * DYVE_NSTAT;
    std::memset(st, 0, sizeof(double) * DYVE_NSTAT);
    Sample(*s, *sc, s->x + (size_t)i * s->cin * s->h * s->w,
           s->out + (size_t)i * s->cout * s->ho * s->wo, st, s->changed + i)
        .run();
  }
  release(sc);
}

}  // namespace

// Fill the site's check-term table for its configured geometry (top_off, top_rel; see
// Sample::checks). Called once per configuration, before any call that uses it.
extern "C" int dyve_prepare(const DyveSite* s) {
  if (s->m < 1 || s->top_ci == nullptr || s->top_off == nullptr || s->top_rel == nullptr) return 2;
  Scratch* sc = acquire();
  Sample sample(*s, *sc, nullptr, nullptr, nullptr, nullptr);
  sample.taps();
  sample.prepare(s->top_off, s->top_rel);
  release(sc);
  return 0;
}

namespace {

// fn(lo, hi) over [0, n) in up to `threads` contiguous ranges, the first on this thread.
// Built with OpenMP (native.py tries that first), the ranges run on the process's OpenMP
// pool: the library binds to the libgomp PyTorch loaded, so they run on PyTorch's own
// workers. Those spin for milliseconds after each of PyTorch's parallel ops, and a thread
// of our own started beside one ran at about half speed: at batch 64 on 2 cores, a
// program called right after eager PyTorch took 16 ms instead of 9 (benchmarks/NOTES.md,
// session 25).
template <class F>
void split(int n, int threads, F fn) {
  const int T = std::max(1, std::min(threads, n));
  if (T == 1) {
    fn(0, n);
    return;
  }
  const int per = (n + T - 1) / T;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static, 1) num_threads(T)
  for (int t = 0; t < T; ++t) {
    const int lo = t * per, hi = std::min(n, lo + per);
    if (lo < hi) fn(lo, hi);
  }
#else
  std::vector<std::thread> pool;
  for (int t = 1; t < T; ++t) {
    const int lo = t * per, hi = std::min(n, lo + per);
    if (lo < hi) pool.emplace_back(fn, lo, hi);
  }
  fn(0, std::min(n, per));
  for (auto& th : pool) th.join();
#endif
}

}  // namespace

extern "C" int dyve_site(const DyveSite* s) {
  if (s->n < 0 || s->cout < 1 || s->cin < 1 || s->ho < 1 || s->wo < 1) return 1;
  if (s->use_spet && (s->m < 1 || s->top_ci == nullptr)) return 2;
  split(s->n, s->threads, [s](int lo, int hi) { run_range(s, lo, hi); });
  return 0;
}

// DyVEDeep's knobs on one conv/linear site, really skipping work (the "fast" back-end).
//
// Built on first use by dyve/mechanisms/dyvedeep/native.py (g++ -O3 -march=native, with
// fast_program.cpp appended) and called through ctypes: one call per site and batch here,
// or one call per network and batch through fast_program.cpp. It computes what the emulation in
// kernel.py computes (same knob semantics), but only the work it decides to do, and
// counts that work. Layout per sample (see docs/methods/dyvedeep.md, "fast back-end"):
//
//   * SFMA: per input channel mean and statistic; approximated channels are dropped
//     from the im2col matrices and the weights (K' = kept channels x kh x kw terms) and
//     their constant contribution goes into a per-sample bias.
//   * colT [K'][positions]: term-major im2col. Dense sites run a register-tiled GEMM on it
//     (8 output channels x 32 positions); SPET sites run their check pass on it (each
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
// Portable C++17 with GCC vector extensions: 16-float vectors become AVX-512, AVX2 or SSE
// code depending on the -march the library was built for.

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

typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));
constexpr int V = 16;

inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
// a - 0 is a for every float (-0 included), so this folds to one broadcast; `vf{} + a`
// does not (0 + -0 is +0): it cost a scalar add and a shuffle per weight (perf annotate).
inline vf splat(float a) { return a - vf{}; }
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));
inline float hsum(vf v) {
  const vf8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const vf4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
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
typedef int32_t vi __attribute__((vector_size(64)));
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
int dyve_abi() { return 7; }

}  // extern "C"

namespace {

// per-neuron dot products cost about this many times a vectorised lane (measured, NOTES.md)
constexpr float NEURON_COST = 1.0f;

struct Scratch {
  std::vector<float> xq, xt, wr, topw, bias, partial;
  std::vector<float> wc;      // subset mode on small maps: the kept filters' weights, compact
  std::vector<int32_t> wcofs;  // ... and where each term's row starts in wc
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
    L16 = round_up(std::max(L, 1), V);
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
    const int run16 = round_up(run, V);
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

  // NO output channels (filters u.. of the term-major table wt, term k's row at wofs[k])
  // x 32 positions from i. Each weight is a constant offset from one pointer per term, and
  // NO is a template argument, so the accumulators and pointers stay in registers.
  template <int NO>
  void tile(const float* wt, const int* wofs, int u, int i, vf (&acc)[8][2]) const {
    const float* xq = sc.xq.data() + i;
    const int* toff = sc.toff.data();
    wt += u;
    for (int t = 0; t < NO; ++t) acc[t][0] = acc[t][1] = vf{};
    for (int k = 0; k < K; ++k) {
      const float* r = xq + toff[k];
      const float* w = wt + wofs[k];
      const vf a0 = load(r), a1 = load(r + V);
      for (int t = 0; t < NO; ++t) {
        const vf wv = splat(w[t]);
        acc[t][0] += wv * a0;
        acc[t][1] += wv * a1;
      }
    }
  }

  void tile(const float* wt, const int* wofs, int u, int no, int i, vf (&acc)[8][2]) const {
    switch (no) {
      case 8: return tile<8>(wt, wofs, u, i, acc);
      case 7: return tile<7>(wt, wofs, u, i, acc);
      case 6: return tile<6>(wt, wofs, u, i, acc);
      case 5: return tile<5>(wt, wofs, u, i, acc);
      case 4: return tile<4>(wt, wofs, u, i, acc);
      case 3: return tile<3>(wt, wofs, u, i, acc);
      case 2: return tile<2>(wt, wofs, u, i, acc);
      default: return tile<1>(wt, wofs, u, i, acc);
    }
  }

  // The term-major weights of the filters computed: the site's own table, or in subset
  // mode a compact copy of the kept filters' rows (nout filters, padded with zeros to
  // whole vectors), so that the tiles address filters u.. as consecutive weights.
  std::pair<const float*, const int*> filter_table(int nout) {
    if (fl == nullptr) return {s.weight_t, sc.wofs.data()};
    const int width = round_up(nout, V);
    sc.wc.resize((size_t)K * width);  // every entry written below: no zero fill first
    sc.wcofs.resize(std::max(K, 1));
    for (int k = 0; k < K; ++k) {
      const float* src = s.weight_t + sc.wofs[k];
      float* dst = &sc.wc[(size_t)k * width];
      for (int u = 0; u < nout; ++u) dst[u] = src[fl[u]];
      std::fill(dst + nout, dst + width, 0.f);
      sc.wcofs[k] = k * width;
    }
    return {sc.wc.data(), sc.wcofs.data()};
  }

  // Filter-vectorised tile for small maps: 8 output positions (plane offsets q) x 16 * NV
  // filters from o0 of the term-major weights wt (term k's row at wofs[k]). A term's
  // weights for 16 filters are one vector load, its inputs are broadcast; the sum runs over
  // the terms in the same order as tile(), so the outputs are the same bit for bit.
  // ROW: the 8 positions are consecutive in the planes (q[p] = q[0] + p: 8 x 8 maps), so
  // the inputs are constant offsets from one pointer, not eight offsets reloaded per term.
  template <int NV, bool ROW>
  void tile_filters(const float* wt, const int* wofs, int o0, const int* q,
                    vf (&acc)[8][2]) const {
    const float* xq = sc.xq.data() + (ROW ? q[0] : 0);
    for (int p = 0; p < 8; ++p)
      for (int v = 0; v < NV; ++v) acc[p][v] = vf{};
    for (int k = 0; k < K; ++k) {
      const float* r = xq + sc.toff[k];
      const float* w = wt + wofs[k] + o0;
      vf wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = load(w + v * V);
      for (int p = 0; p < 8; ++p) {
        const vf xv = splat(r[ROW ? p : q[p]]);
        for (int v = 0; v < NV; ++v) acc[p][v] += wv[v] * xv;
      }
    }
  }

  // Dense pass over output positions, filters in vectors: for maps whose rows fill few of
  // the plane pass's 32-position tiles (8 x 8 maps: 64 of 96 lanes; 2 x 2: 4 of 32).
  // Subset mode runs on the compact table (filter_table; its padding lanes are computed,
  // not written).
  void dense_filters(int nout) {
    const auto [wt, wofs] = filter_table(nout);
    const int width = round_up(nout, V);
    int q[8];
    for (int p0 = 0; p0 < P; p0 += 8) {
      const int np = std::min(8, P - p0);
      for (int p = 0; p < 8; ++p) {  // the last group repeats its last position
        const int pos = p0 + std::min(p, np - 1);
        q[p] = (pos / s.wo) * Wq + pos % s.wo;
      }
      bool row = true;
      for (int p = 1; p < 8; ++p) row = row && q[p] == q[0] + p;
      for (int o0 = 0; o0 < width; o0 += 2 * V) {
        const int nv = std::min(2, (width - o0) / V);
        vf acc[8][2];
        if (nv == 2)
          row ? tile_filters<2, true>(wt, wofs, o0, q, acc)
              : tile_filters<2, false>(wt, wofs, o0, q, acc);
        else
          row ? tile_filters<1, true>(wt, wofs, o0, q, acc)
              : tile_filters<1, false>(wt, wofs, o0, q, acc);
        for (int v = 0; v < nv; ++v)
          for (int p = 0; p < np; ++p) {
            alignas(64) float buf[V];
            store(buf, acc[p][v]);
            const int lanes = std::min(V, nout - o0 - v * V);
            for (int l = 0; l < lanes; ++l) {
              const int u = o0 + v * V + l;
              const float scale = osc != nullptr ? osc[u] : oscale;
              const float b = sc.bias[fl != nullptr ? fl[u] : u];
              out[(size_t)u * P + p0 + p] = finish((b + buf[l]) * scale);
            }
          }
      }
    }
    st[ST_MACS] += (double)K * P * nout;
  }

  // Dense plane pass: every output channel (subset mode: the filters fl) at every position.
  // Small maps take the filter-vectorised pass when its lanes are fuller than the plane
  // tiles': all of them for whole vectors of filters, a share for a subset of filters.
  void dense() {
    const int nout = fl != nullptr ? nf : s.cout;
    const int tiles = round_up(NF, 2 * V);
    if (5 * P < 4 * tiles && (fl == nullptr ? s.cout % V == 0
                                             : (long)nf * tiles > (long)round_up(nf, V) * P)) {
      dense_filters(nout);
      return;
    }
    const auto [wt, wofs] = filter_table(nout);
    for (int u = 0; u < nout; u += 8) {
      const int no = std::min(8, nout - u);
      for (int i = 0; i < NF; i += 2 * V) {
        vf acc[8][2];
        tile(wt, wofs, u, no, i, acc);
        alignas(64) float buf[8][2 * V];
        for (int t = 0; t < no; ++t) {
          store(buf[t], acc[t][0]);
          store(buf[t] + V, acc[t][1]);
        }
        const int* flat = sc.flat.data() + i;
        const bool relu = s.relu;
        for (int t = 0; t < no; ++t) {
          float* oc = out + (size_t)(u + t) * P;
          const float b = sc.bias[fl != nullptr ? fl[u + t] : u + t];
          const float scale = osc != nullptr ? osc[u + t] : oscale;
          for (int l = 0; l < 2 * V; ++l) {
            const int p = flat[l];
            const float v = (b + buf[t][l]) * scale;
            if (p >= 0) oc[p] = relu && v < 0.f ? 0.f : v;
          }
        }
      }
    }
    st[ST_MACS] += (double)K * P * nout;
  }

  // G neurons of one filter (channels-last runs): each weight vector is loaded once for G.
  template <int G>
  void neuron_group(const float* wo, const int32_t* ps, float* oc, float b) {
    const size_t row = (size_t)s.dh * Wp * nk;
    const float* p[G];
    for (int g = 0; g < G; ++g) p[g] = sc.xt.data() + sc.xbase[ps[g]];
    vf a[G];
    for (int g = 0; g < G; ++g) a[g] = vf{};
    for (int ky = 0; ky < s.kh; ++ky) {
      const float* w = wo + ky * L16;
      const size_t d = ky * row;
      for (int k = 0; k < L16; k += V) {
        const vf wv = load(w + k);
        for (int g = 0; g < G; ++g) a[g] += wv * load(p[g] + d + k);
      }
    }
    for (int g = 0; g < G; ++g) oc[ps[g]] = finish(b + hsum(a[g]));
  }

  // Neuron dot products (runs of kernel rows in the channels-last layout), 8 at a time.
  void neurons(int o, const int32_t* ps, int n) {
    rows();
    const float* wo = filter_rows(o);
    float* oc = out + (size_t)o * P;
    const float b = sc.bias[o];
    int i = 0;
    for (; i + 8 <= n; i += 8) neuron_group<8>(wo, ps + i, oc, b);
    if (i + 4 <= n) neuron_group<4>(wo, ps + i, oc, b), i += 4;
    for (; i < n; ++i) neuron_group<1>(wo, ps + i, oc, b);
    st[ST_MACS] += (double)K * n;
    st[ST_WASTED] += (double)(nk - nkept) * k2 * n;  // zeroed mode's dropped channels
  }

  // Vectorised completion of whole plane vectors (flat starts in `vs`), 4 at a time.
  void vectors(int o, const int32_t* vs, int n, const float* part) {
    const float* xq = sc.xq.data();
    const float* wt = s.weight_t + o;
    const int* toff = sc.toff.data();
    const int* wofs = sc.wofs.data();
    float* oc = out + (size_t)o * P;
    const float b = sc.bias[o];
    double lanes = 0.0, stopped = 0.0;
    for (int g = 0; g < n; g += 4) {
      const int ng = std::min(4, n - g);
      vf a[4] = {vf{}, vf{}, vf{}, vf{}};
      int at[4] = {vs[g], vs[g], vs[g], vs[g]};
      for (int v = 1; v < ng; ++v) at[v] = vs[g + v];
      for (int k = 0; k < K; ++k) {
        const vf wv = splat(wt[wofs[k]]);
        const float* r = xq + toff[k];
        a[0] += wv * load(r + at[0]);
        a[1] += wv * load(r + at[1]);
        a[2] += wv * load(r + at[2]);
        a[3] += wv * load(r + at[3]);
      }
      alignas(64) float buf[4][V];
      for (int v = 0; v < 4; ++v) store(buf[v], a[v]);
      for (int v = 0; v < ng; ++v) {
        const uint32_t valid = sc.valid[at[v] / V];
        uint32_t m = kept_lanes(load(part + at[v]), s.spet) & valid;
        lanes += __builtin_popcount(valid);
        stopped += __builtin_popcount(valid) - __builtin_popcount(m);
        for (; m; m &= m - 1) {  // stopped lanes keep the 0 spet() wrote
          const int l = __builtin_ctz(m);
          oc[sc.flat[at[v] + l]] = finish(b + buf[v][l]);
        }
      }
    }
    st[ST_MACS] += (double)K * lanes;
    st[ST_WASTED] += (double)K * stopped + (double)(nk - nkept) * k2 * (lanes - stopped);
  }

  // SPET in the plane layout: check pass, then each channel completes its kept neurons
  // per neuron or per plane vector, whichever costs less.
  void spet() {
    const float* xq = sc.xq.data();
    std::vector<float>& partial = sc.partial;
    partial.assign(sc.flat.size(), 0.f);
    for (int o = 0; o < s.cout; ++o) {
      const int nt = sc.ntop[o];
      const int32_t* tk = ttop + (size_t)o * s.m;
      const float* tw = topw + (size_t)o * s.m;
      float* oc = out + (size_t)o * P;
      sc.active.clear();
      sc.vecs.clear();
      std::fill(oc, oc + P, 0.f);  // the neurons SPET stops
      for (int i = 0; i < NF; i += 4 * V) {
        vf a[4];
        for (int v = 0; v < 4; ++v) a[v] = splat(sc.bias[o]);
        for (int t = 0; t < nt; ++t) {
          const vf wv = splat(tw[t]);
          const float* r = xq + tk[t] + i;
          a[0] += wv * load(r);
          a[1] += wv * load(r + V);
          a[2] += wv * load(r + 2 * V);
          a[3] += wv * load(r + 3 * V);
        }
        for (int v = 0; v < 4; ++v) {
          const int at = i + v * V;
          store(&partial[at], a[v]);
          uint32_t m = kept_lanes(a[v], s.spet) & sc.valid[at / V];
          if (!m) continue;
          sc.vecs.push_back(at);
          for (; m; m &= m - 1) sc.active.push_back(sc.flat[at + __builtin_ctz(m)]);
        }
      }
      const int na = (int)sc.active.size();
      const int real = zeroed ? sc.tkept[o] : nt;  // check terms on kept channels
      st[ST_MACS] += (double)nt * P;
      st[ST_WASTED] += (double)(nt - real) * P;
      st[ST_STOPPED] += P - na;
      st[ST_RECOMPUTED] += (double)real * na;
      if (na * NEURON_COST < (float)sc.vecs.size() * V) {
        neurons(o, sc.active.data(), na);
      } else {
        vectors(o, sc.vecs.data(), (int)sc.vecs.size(), partial.data());
      }
    }
    st[ST_CHECKED] += (double)P * s.cout;
  }

  // Neurons of filter o at positions ps (neuron layout): SPET checks each by gather (when
  // on), then the ones it keeps are completed four at a time.
  void some(int o, const int32_t* ps, int n) {
    rows();
    if (!s.use_spet) {
      neurons(o, ps, n);
      return;
    }
    const int nt = sc.ntop[o];
    const int32_t* rel = trel + (size_t)o * s.m;
    const float* tw = topw + (size_t)o * s.m;
    float* oc = out + (size_t)o * P;
    sc.keep.clear();
    for (int i = 0; i < n; ++i) {
      const float* xb = sc.xt.data() + sc.xbase[ps[i]];
      float a = sc.bias[o];
      for (int t = 0; t < nt; ++t) a += tw[t] * xb[rel[t]];
      if (a <= s.spet)
        oc[ps[i]] = 0.f;
      else
        sc.keep.push_back(ps[i]);
    }
    const int kept = (int)sc.keep.size();
    st[ST_MACS] += (double)nt * n;
    st[ST_CHECKED] += n;
    st[ST_STOPPED] += n - kept;
    st[ST_RECOMPUTED] += (double)nt * kept;
    neurons(o, sc.keep.data(), kept);
  }

  // Neuron mode (SDSS sites, linear layers): the grid neurons, then each off-grid neuron
  // interpolated from its grid neighbours or listed; listed neurons are computed per
  // filter at the end (the decisions read only grid neurons).
  void neuron_mode() {
    const int S = s.use_sdss ? s.sdss_stride : 1;
    sc.active.clear();
    for (int r = 0; r < s.ho; r += S)
      for (int c = 0; c < s.wo; c += S) sc.active.push_back(r * s.wo + c);
    for (int o = 0; o < s.cout; ++o) some(o, sc.active.data(), (int)sc.active.size());
    if (!s.use_sdss) return;
    double tests = 0.0, avg = 0.0, interp = 0.0;
    int nb[4];
    sc.pending.resize((size_t)s.cout * P);
    sc.npending.assign(s.cout, 0);
    for (int r = 0; r < s.ho; ++r)
      for (int c = 0; c < s.wo; ++c) {
        const bool on_r = r % S == 0, on_c = c % S == 0;
        if (on_r && on_c) continue;
        const int r0 = r - r % S, c0 = c - c % S;
        const bool down = r0 + S < s.ho, right = c0 + S < s.wo;
        int cnt = 0;
        nb[cnt++] = r0 * s.wo + c0;
        if (!on_c && right) nb[cnt++] = r0 * s.wo + c0 + S;
        if (!on_r && down) nb[cnt++] = (r0 + S) * s.wo + c0;
        if (!on_r && !on_c && right && down) nb[cnt++] = (r0 + S) * s.wo + c0 + S;
        const int p = r * s.wo + c;
        tests += (double)cnt * s.cout;
        for (int o = 0; o < s.cout; ++o) {
          const float* oc = out + (size_t)o * P;
          float mx = -INFINITY, sum = 0.f;
          for (int t = 0; t < cnt; ++t) {
            const float v = oc[nb[t]];
            mx = std::max(mx, s.relu ? v : std::fabs(v));
            sum += v;
          }
          if (mx <= s.sdss) {
            out[(size_t)o * P + p] = sum / cnt;
            interp += 1;
            avg += cnt;
          } else {
            sc.pending[(size_t)o * P + sc.npending[o]++] = p;
          }
        }
      }
    for (int o = 0; o < s.cout; ++o) some(o, &sc.pending[(size_t)o * P], sc.npending[o]);
    st[ST_INTERPOLATED] = interp;
    st[ST_OVERHEAD] += tests + avg;
  }

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
template <class F>
void split(int n, int threads, F fn) {
  const int T = std::max(1, std::min(threads, n));
  if (T == 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> pool;
  const int per = (n + T - 1) / T;
  for (int t = 1; t < T; ++t) {
    const int lo = t * per, hi = std::min(n, lo + per);
    if (lo < hi) pool.emplace_back(fn, lo, hi);
  }
  fn(0, std::min(n, per));
  for (auto& th : pool) th.join();
}

}  // namespace

extern "C" int dyve_site(const DyveSite* s) {
  if (s->n < 0 || s->cout < 1 || s->cin < 1 || s->ho < 1 || s->wo < 1) return 1;
  if (s->use_spet && (s->m < 1 || s->top_ci == nullptr)) return 2;
  split(s->n, s->threads, [s](int lo, int hi) { run_range(s, lo, hi); });
  return 0;
}

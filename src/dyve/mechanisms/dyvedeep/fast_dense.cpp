// The dense passes of a site (fast_kernel.cpp's Sample): register tiles over the plane
// layout (TF filters x TPV V positions) and, on small maps, filter-vectorised tiles (TP
// positions x TV V filters); V and the tile sizes are set per target in fast_kernel.cpp.
// Compiled after fast_kernel.cpp as one translation unit (see native.py).

namespace {

// NO output channels (filters u.. of the term-major table wt, term k's row at wofs[k])
// x TPV V positions from i. Each weight is a constant offset from one pointer per term, and
// NO is a template argument, so the accumulators and pointers stay in registers.
template <int NO>
inline void Sample::tile(const float* wt, const int* wofs, int u, int i,
                         vf (&acc)[TF][TPV]) const {
  const float* xq = sc.xq.data() + i;
  const int* toff = sc.toff.data();
  wt += u;
  vf a[NO][TPV];  // local: updating acc in the loop could make them live in memory
  for (int t = 0; t < NO; ++t)
    for (int j = 0; j < TPV; ++j) a[t][j] = vf{};
  for (int k = 0; k < K; ++k) {
    const float* r = xq + toff[k];
    const float* w = wt + wofs[k];
    vf x[TPV];
    for (int j = 0; j < TPV; ++j) x[j] = load(r + j * V);
    for (int t = 0; t < NO; ++t) {
      const vf wv = splat(w[t]);
      for (int j = 0; j < TPV; ++j) a[t][j] += wv * x[j];
    }
  }
  for (int t = 0; t < NO; ++t)
    for (int j = 0; j < TPV; ++j) acc[t][j] = a[t][j];
}

// The tile for no (1 .. TF) filters, NO counting down to it (NO a template argument).
template <int NO>
inline void Sample::tile_upto(const float* wt, const int* wofs, int u, int no, int i,
                              vf (&acc)[TF][TPV]) const {
  if constexpr (NO > 1)
    if (no < NO) return tile_upto<NO - 1>(wt, wofs, u, no, i, acc);
  tile<NO>(wt, wofs, u, i, acc);
}

// The term-major weights of the filters computed: the site's own table, or in subset
// mode a compact copy of the kept filters' rows (nout filters, padded with zeros to
// whole vectors), so that the tiles address filters u.. as consecutive weights.
inline std::pair<const float*, const int*> Sample::filter_table(int nout) {
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

// One term of a filter-vectorised tile: its weights for NV vectors of filters (one load
// each) times its input at each position of the lane mask M (broadcast); the positions
// outside M are skipped (they read zero padding). M is a template argument, so the lane
// tests fold away and the accumulators stay in registers.
template <int NP, int NV, int MV, bool ROW, unsigned M>
inline void tile_term(const float* r, const float* w, const int* q, vf (&acc)[NP][MV]) {
  if constexpr (M != 0) {
    vf wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = load(w + v * V);
#pragma GCC unroll 8
    for (int p = 0; p < NP; ++p) {
      if (((M >> p) & 1u) == 0) continue;
      const vf xv = splat(r[ROW ? p : q[p]]);
      for (int v = 0; v < NV; ++v) acc[p][v] += wv[v] * xv;
    }
  }
}

// Where a 3 x 3 kernel reads its input rather than zero padding, for the tiles that skip
// the padding: per kernel row ky the tile's positions whose input row is inside the map
// (r), per kernel column kx those whose input column is (c); tap (ky, kx) is computed at
// the positions r[ky] & c[kx]. A tile takes a pattern only when these are exactly its own
// (dense_filters_tiled), so a skipped product is always one by a padding zero.
struct TapMasks {
  unsigned r[3], c[3];
};
enum { PAT_NONE = 0, PAT_TOP, PAT_MID, PAT_BOTTOM, PAT_TOP2, PAT_MID2, PAT_MAP2, PAT_N };

template <int NP>
constexpr TapMasks tap_masks(int pat) {
  constexpr unsigned A = (1u << NP) - 1, L = A & ~1u, R = A >> 1;
  switch (pat) {
    case PAT_TOP:  // a whole row of a map, stride 1, padding 1: the first row
      return {{0, A, A}, {L, A, R}};
    case PAT_MID:  // ... a row between
      return {{A, A, A}, {L, A, R}};
    case PAT_BOTTOM:  // ... the last row
      return {{A, A, 0}, {L, A, R}};
    case PAT_TOP2:  // a whole row, stride 2, padding 1, from an even-sized map: the first
      return {{0, A, A}, {L, A, A}};
    case PAT_MID2:  // ... the others
      return {{A, A, A}, {L, A, A}};
    case PAT_MAP2:  // a whole 2 x 2 map (positions row by row), stride 1, padding 1
      return {{0xCu & A, A, 0x3u & A}, {0xAu & A, A, 0x5u & A}};
    default:
      return {{A, A, A}, {A, A, A}};
  }
}

// The nine taps of one input channel (terms k0 .. k0 + 8 of a 3 x 3 kernel) under PAT.
template <int NP, int NV, int MV, bool ROW, int PAT, size_t... T>
inline void tile_taps(const float* xq, const int* toff, const float* w, const int* wofs,
                      const int* q, vf (&acc)[NP][MV], std::index_sequence<T...>) {
  constexpr TapMasks m = tap_masks<NP>(PAT);
  (tile_term<NP, NV, MV, ROW, (m.r[T / 3] & m.c[T % 3])>(xq + toff[T], w + wofs[T], q, acc),
   ...);
}

// Filter-vectorised tile for small maps: NP output positions (plane offsets q) x V * NV
// filters from o0 of the term-major weights wt (term k's row at wofs[k]); acc has MV >= NV
// vectors per position. A term's weights for V filters are one vector load, its inputs are
// broadcast; the sum runs over the terms in the same order as tile(). With a pattern PAT
// (3 x 3 kernels), the products by padding zeros are skipped: each would have added 0, so
// the outputs are the same bit for bit. ROW: the NP positions are consecutive in the planes
// (q[p] = q[0] + p: 8 x 8 maps), so the inputs are constant offsets from one pointer, not
// NP offsets reloaded per term. Never inlined: inlined into its callers, an unrelated edit
// there once made the compiler keep the accumulators in memory (8 x 8 sites 25 % slower);
// the call costs about 1 %.
template <int NP, int NV, int MV, bool ROW, int PAT>
__attribute__((noinline)) void Sample::tile_filters(const float* wt, const int* wofs, int o0,
                                                    const int* q, vf (&acc)[NP][MV]) const {
  const float* xq = sc.xq.data() + (ROW ? q[0] : 0);
  const int* toff = sc.toff.data();
  // local accumulators: stores to acc (vectors of float) could alias the float loads, so
  // updating acc in the loop made the compiler store every accumulator after each product
  vf a[NP][MV];
  for (int p = 0; p < NP; ++p)
    for (int v = 0; v < NV; ++v) a[p][v] = vf{};
  if constexpr (PAT == PAT_NONE) {
    for (int k = 0; k < K; ++k)
      tile_term<NP, NV, MV, ROW, (1u << NP) - 1>(xq + toff[k], wt + wofs[k] + o0, q, a);
  } else {
    for (int k0 = 0; k0 < K; k0 += 9)
      tile_taps<NP, NV, MV, ROW, PAT>(xq, toff + k0, wt + o0, wofs + k0, q, a,
                                      std::make_index_sequence<9>{});
  }
  for (int p = 0; p < NP; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = a[p][v];
}

// The tile for nv (1 .. MV) vectors of filters, NV counting down to it (a template
// argument, so the accumulators stay in registers), under pattern pat (ROW for the row
// patterns and, without a pattern, where row), or none.
template <int NP, int NV, int MV>
inline void Sample::tile_filters_upto(const float* wt, const int* wofs, int o0, const int* q,
                                      int pat, bool row, int nv, vf (&acc)[NP][MV]) const {
  if constexpr (NV > 1)
    if (nv < NV) return tile_filters_upto<NP, NV - 1, MV>(wt, wofs, o0, q, pat, row, nv, acc);
  switch (pat) {
    case PAT_TOP:
      return tile_filters<NP, NV, MV, true, PAT_TOP>(wt, wofs, o0, q, acc);
    case PAT_MID:
      return tile_filters<NP, NV, MV, true, PAT_MID>(wt, wofs, o0, q, acc);
    case PAT_BOTTOM:
      return tile_filters<NP, NV, MV, true, PAT_BOTTOM>(wt, wofs, o0, q, acc);
    case PAT_TOP2:
      return tile_filters<NP, NV, MV, true, PAT_TOP2>(wt, wofs, o0, q, acc);
    case PAT_MID2:
      return tile_filters<NP, NV, MV, true, PAT_MID2>(wt, wofs, o0, q, acc);
    case PAT_MAP2:
      return tile_filters<NP, NV, MV, false, PAT_MAP2>(wt, wofs, o0, q, acc);
  }
  row ? tile_filters<NP, NV, MV, true, PAT_NONE>(wt, wofs, o0, q, acc)
      : tile_filters<NP, NV, MV, false, PAT_NONE>(wt, wofs, o0, q, acc);
}

// The pattern of a tile of np positions from p0 (PAT_NONE when it has none): the one whose
// masks are exactly where the tile's taps read the input.
template <int NP>
inline int Sample::tap_pattern(int p0, int np, bool row) const {
  if (s.kh != 3 || s.kw != 3 || np != NP) return PAT_NONE;
  unsigned valid[9];
  for (int t = 0; t < 9; ++t) {
    valid[t] = 0;
    for (int p = 0; p < np; ++p) {
      const int pos = p0 + p, iy = pos / s.wo * s.sh - s.ph + t / 3 * s.dh;
      const int ix = pos % s.wo * s.sw - s.pw + t % 3 * s.dw;
      valid[t] |= (unsigned)(iy >= 0 && iy < s.h && ix >= 0 && ix < s.w) << p;
    }
  }
  for (int pat = PAT_NONE + 1; pat < PAT_N; ++pat) {
    if ((pat == PAT_MAP2) == row) continue;  // the row patterns read q as a row
    const TapMasks m = tap_masks<NP>(pat);
    bool same = true;
    for (int t = 0; t < 9; ++t) same = same && valid[t] == (m.r[t / 3] & m.c[t % 3]);
    if (same) return pat;
  }
  return PAT_NONE;
}

// Dense pass over output positions, filters in vectors: for maps whose rows fill few of
// the plane pass's tiles of TPV V positions (with AVX-512, 8 x 8 maps: 64 of 96 lanes;
// 2 x 2: 4 of 48). Subset mode runs on the compact table (filter_table; its padding lanes are
// computed, not written), or, when the kept filters need as many vectors as all of them
// (49-64 of 64 filters with 16 lanes), on the site's own table, writing the kept filters
// only (WHOLE): the same vector work without the per-sample copy (K x cout weights).
inline void Sample::dense_filters(int nout) {
  if (fl != nullptr && s.cout % V == 0 && round_up(nout, V) == s.cout) {
    sc.fat.assign(s.cout, -1);  // filter f's output channel, -1 where it is not computed
    for (int u = 0; u < nout; ++u) sc.fat[fl[u]] = u;
    dense_filters_on<true>(nout, s.weight_t, sc.wofs.data(), s.cout);
  } else {
    const auto [wt, wofs] = filter_table(nout);
    dense_filters_on<false>(nout, wt, wofs, round_up(nout, V));
  }
}

#if defined(__AVX512F__)
// r[p] (8 floats) <- column p of the 8 x 8 block r: the classic unpack, shuffle, swap.
inline void transpose8(__m256 (&r)[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

// Writes vector v of a filter-vectorised tile (V whole filters from u, no subset, one
// scale) at its np positions from p0: (b + sum) x scale and the ReLU computed on vectors,
// then each filter's run of np positions stored (the tile holds one vector per position;
// the outputs are rows per filter): with AVX-512, rows of 8 or 4 positions are transposed
// in registers, in blocks of as many filters; otherwise through a buffer.
template <int NP, int MV>
inline void Sample::filters_out(int u, int p0, int np, const vf (&acc)[NP][MV], int v) {
  const vf b = load(sc.bias.data() + u), scale = splat(oscale);
  vf y[NP] = {};
  for (int p = 0; p < np; ++p) y[p] = finish((b + acc[p][v]) * scale);
  float* o = out + (size_t)u * P + p0;
#if defined(__AVX512F__)
  if constexpr (NP == 8 || NP == 4) {
    if (np == NP) {  // transposed in registers: blocks of NP filters x NP positions
      if constexpr (NP == 8) {
        for (int h = 0; h < 2; ++h, o += 8 * (size_t)P) {
          __m256 r[8];
          for (int p = 0; p < 8; ++p) {
            const vf a = y[p];
            r[p] = (__m256)(h ? __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15)
                              : __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7));
          }
          transpose8(r);
          for (int l = 0; l < 8; ++l) _mm256_storeu_ps(o + (size_t)l * P, r[l]);
        }
      } else {
        __m128 r[4][4];  // [block of 4 filters][position]
        for (int p = 0; p < 4; ++p) {
          // shuffles, not the extract intrinsics (GCC 12 warns inside those)
          const vf a = y[p];
          r[0][p] = (__m128)__builtin_shufflevector(a, a, 0, 1, 2, 3);
          r[1][p] = (__m128)__builtin_shufflevector(a, a, 4, 5, 6, 7);
          r[2][p] = (__m128)__builtin_shufflevector(a, a, 8, 9, 10, 11);
          r[3][p] = (__m128)__builtin_shufflevector(a, a, 12, 13, 14, 15);
        }
        for (int h = 0; h < 4; ++h) {
          _MM_TRANSPOSE4_PS(r[h][0], r[h][1], r[h][2], r[h][3]);
          for (int l = 0; l < 4; ++l) _mm_storeu_ps(o + (size_t)(4 * h + l) * P, r[h][l]);
        }
      }
      return;
    }
  }
#endif
  alignas(64) float buf[NP][V];
  for (int p = 0; p < np; ++p) store(buf[p], y[p]);
  for (int l = 0; l < V; ++l, o += P)
    for (int p = 0; p < np; ++p) o[p] = buf[p][l];
}

// Tiles of TP positions x TV vectors of filters; on maps of at most SP columns, of SP x SV
// when there are SV vectors of filters to fill them (or fewer than TP positions, where a
// tile of TP would repeat positions in half its lanes or more): a tile is then one row,
// or a whole 2 x 2 map, and skips every tap that reads padding at each of its positions.
template <bool WHOLE>
inline void Sample::dense_filters_on(int nout, const float* wt, const int* wofs, int width) {
  if (P <= SP || (s.wo <= SP && width >= SV * V))
    dense_filters_tiled<WHOLE, SP, SV>(nout, wt, wofs, width);
  else
    dense_filters_tiled<WHOLE, TP, TV>(nout, wt, wofs, width);
}

template <bool WHOLE, int NP, int MV>
inline void Sample::dense_filters_tiled(int nout, const float* wt, const int* wofs,
                                        int width) {
  int q[NP];
  for (int p0 = 0; p0 < P; p0 += NP) {
    const int np = std::min(NP, P - p0);
    for (int p = 0; p < NP; ++p) {  // the last group repeats its last position
      const int pos = p0 + std::min(p, np - 1);
      q[p] = (pos / s.wo) * Wq + pos % s.wo;
    }
    bool row = true;
    for (int p = 1; p < NP; ++p) row = row && q[p] == q[0] + p;
    const int pat = tap_pattern<NP>(p0, np, row);
    for (int o0 = 0; o0 < width; o0 += MV * V) {
      const int nv = std::min(MV, (width - o0) / V);
      vf acc[NP][MV];
      tile_filters_upto<NP, MV, MV>(wt, wofs, o0, q, pat, row, nv, acc);
      for (int v = 0; v < nv; ++v) {
        if (!WHOLE && fl == nullptr && osc == nullptr && nout - o0 - v * V >= V) {
          filters_out(o0 + v * V, p0, np, acc, v);
          continue;
        }
        for (int p = 0; p < np; ++p) {
          alignas(64) float buf[V];
          store(buf, acc[p][v]);
          const int lanes = WHOLE ? V : std::min(V, nout - o0 - v * V);
          for (int l = 0; l < lanes; ++l) {
            int u = o0 + v * V + l;  // the output channel (WHOLE: the filter, mapped below)
            if constexpr (WHOLE) {
              u = sc.fat[u];
              if (u < 0) continue;
            }
            const float scale = osc != nullptr ? osc[u] : oscale;
            const float b = sc.bias[fl != nullptr ? fl[u] : u];
            out[(size_t)u * P + p0 + p] = finish((b + buf[l]) * scale);
          }
        }
      }
    }
  }
  st[ST_MACS] += (double)K * P * nout;
}

// Writes one filter's tile of TPV V plane lanes from i to its output plane oc: (b + sum) x
// scale, then the site's ReLU (a NaN stays NaN). The lanes that are output positions map
// to consecutive positions, in order (the planes' rows are the map's, with padding columns
// between): a vector whose lanes all are is stored whole, else with AVX-512 its output
// lanes are compressed and stored as one run, lane by lane on other targets.
inline void Sample::plane_out(float* oc, float b, float scale, int i, const vf (&acc)[TPV]) const {
  const int* flat = sc.flat.data() + i;
  const uint32_t* valid = sc.valid.data() + i / V;
  for (int j = 0; j < TPV; ++j) {
    const uint32_t m = valid[j];
    if (m == 0) continue;
    const vf v = finish((splat(b) + acc[j]) * splat(scale));
    float* o = oc + flat[j * V + __builtin_ctz(m)];  // the first output lane's position
    if (m == (1u << V) - 1) {  // every lane an output position: one store
      store(o, v);
      continue;
    }
#if defined(__AVX512F__)
    const __m512 c = _mm512_maskz_compress_ps((__mmask16)m, (__m512)v);
    _mm512_mask_storeu_ps(o, (__mmask16)((1u << __builtin_popcount(m)) - 1), c);
#else
    for (int l = 0; l < V; ++l)
      if (m >> l & 1u) oc[flat[j * V + l]] = v[l];
#endif
  }
}

// Dense plane pass: every output channel (subset mode: the filters fl) at every position.
// Small maps take the filter-vectorised pass when its lanes are fuller than the plane
// tiles': all of them for whole vectors of filters, a share for a subset of filters.
inline void Sample::dense() {
  const int nout = fl != nullptr ? nf : s.cout;
  const int tiles = round_up(NF, TPV * V);
  if (5 * P < 4 * tiles && (fl == nullptr ? s.cout % V == 0
                                           : (long)nf * tiles > (long)round_up(nf, V) * P)) {
    dense_filters(nout);
    return;
  }
  // every filter kept (fl the identity): the site's own table, no copy
  bool all = fl != nullptr && nout == s.cout;
  for (int u = 0; all && u < nout; ++u) all = fl[u] == u;
  const auto [wt, wofs] = all || fl == nullptr
                              ? std::pair<const float*, const int*>{s.weight_t, sc.wofs.data()}
                              : filter_table(nout);
  for (int u = 0; u < nout; u += TF) {
    const int no = std::min(TF, nout - u);
    for (int i = 0; i < NF; i += TPV * V) {
      vf acc[TF][TPV];
      tile_upto<TF>(wt, wofs, u, no, i, acc);
      for (int t = 0; t < no; ++t)
        plane_out(out + (size_t)(u + t) * P, sc.bias[fl != nullptr ? fl[u + t] : u + t],
                  osc != nullptr ? osc[u + t] : oscale, i, acc[t]);
    }
  }
  st[ST_MACS] += (double)K * P * nout;
}

}  // namespace

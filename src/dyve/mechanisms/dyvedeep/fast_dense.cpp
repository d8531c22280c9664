// The dense passes of a site (fast_kernel.cpp's Sample): register tiles over the plane
// layout (TF filters x 2 V positions) and, on small maps, filter-vectorised tiles (TP
// positions x TV V filters); V and the tile sizes are set per target in fast_kernel.cpp.
// Compiled after fast_kernel.cpp as one translation unit (see native.py).

namespace {

// NO output channels (filters u.. of the term-major table wt, term k's row at wofs[k])
// x 2 V positions from i. Each weight is a constant offset from one pointer per term, and
// NO is a template argument, so the accumulators and pointers stay in registers.
template <int NO>
inline void Sample::tile(const float* wt, const int* wofs, int u, int i, vf (&acc)[TF][2]) const {
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

// The tile for no (1 .. TF) filters, NO counting down to it (NO a template argument).
template <int NO>
inline void Sample::tile_upto(const float* wt, const int* wofs, int u, int no, int i,
                              vf (&acc)[TF][2]) const {
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

// Filter-vectorised tile for small maps: NP output positions (plane offsets q) x V * NV
// filters from o0 of the term-major weights wt (term k's row at wofs[k]); acc has MV >= NV
// vectors per position. A term's weights for V filters are one vector load, its inputs are
// broadcast; the sum runs over the terms in the same order as tile(), so the outputs are
// the same bit for bit. ROW: the NP positions are consecutive in the planes (q[p] = q[0] +
// p: 8 x 8 maps), so the inputs are constant offsets from one pointer, not NP offsets
// reloaded per term.
template <int NP, int NV, int MV, bool ROW>
inline void Sample::tile_filters(const float* wt, const int* wofs, int o0, const int* q,
                                 vf (&acc)[NP][MV]) const {
  const float* xq = sc.xq.data() + (ROW ? q[0] : 0);
  for (int p = 0; p < NP; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = vf{};
  for (int k = 0; k < K; ++k) {
    const float* r = xq + sc.toff[k];
    const float* w = wt + wofs[k] + o0;
    vf wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = load(w + v * V);
    for (int p = 0; p < NP; ++p) {
      const vf xv = splat(r[ROW ? p : q[p]]);
      for (int v = 0; v < NV; ++v) acc[p][v] += wv[v] * xv;
    }
  }
}

// The tile for nv (1 .. MV) vectors of filters, NV counting down to it (a template
// argument, so the accumulators stay in registers), ROW or not.
template <int NP, int NV, int MV>
inline void Sample::tile_filters_upto(const float* wt, const int* wofs, int o0, const int* q,
                                      bool row, int nv, vf (&acc)[NP][MV]) const {
  if constexpr (NV > 1)
    if (nv < NV) return tile_filters_upto<NP, NV - 1, MV>(wt, wofs, o0, q, row, nv, acc);
  row ? tile_filters<NP, NV, MV, true>(wt, wofs, o0, q, acc)
      : tile_filters<NP, NV, MV, false>(wt, wofs, o0, q, acc);
}

// Dense pass over output positions, filters in vectors: for maps whose rows fill few of
// the plane pass's tiles of 2 V positions (with AVX-512, 8 x 8 maps: 64 of 96 lanes; 2 x 2:
// 4 of 32). Subset mode runs on the compact table (filter_table; its padding lanes are
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

// Tiles of TP positions x TV vectors of filters; on maps of fewer than TP positions, of SP
// x SV (a tile of TP there would repeat positions in half its lanes or more).
template <bool WHOLE>
inline void Sample::dense_filters_on(int nout, const float* wt, const int* wofs, int width) {
  if (P <= SP)
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
    for (int o0 = 0; o0 < width; o0 += MV * V) {
      const int nv = std::min(MV, (width - o0) / V);
      vf acc[NP][MV];
      tile_filters_upto<NP, MV, MV>(wt, wofs, o0, q, row, nv, acc);
      for (int v = 0; v < nv; ++v)
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
  st[ST_MACS] += (double)K * P * nout;
}

// Dense plane pass: every output channel (subset mode: the filters fl) at every position.
// Small maps take the filter-vectorised pass when its lanes are fuller than the plane
// tiles': all of them for whole vectors of filters, a share for a subset of filters.
inline void Sample::dense() {
  const int nout = fl != nullptr ? nf : s.cout;
  const int tiles = round_up(NF, 2 * V);
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
    for (int i = 0; i < NF; i += 2 * V) {
      vf acc[TF][2];
      tile_upto<TF>(wt, wofs, u, no, i, acc);
      alignas(64) float buf[TF][2 * V];
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

}  // namespace

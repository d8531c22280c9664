// Per-neuron work of a site (fast_kernel.cpp's Sample): SPET's check pass and the kept
// neurons' completion (per neuron or per plane vector), and neuron mode (SDSS, and SPET on
// maps without a plane pass). Compiled after fast_dense.cpp as one translation unit.

namespace {

// G neurons of one filter (channels-last runs): each weight vector is loaded once for G.
template <int G>
inline void Sample::neuron_group(const float* wo, const int32_t* ps, float* oc, float b) {
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
inline void Sample::neurons(int o, const int32_t* ps, int n) {
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
inline void Sample::vectors(int o, const int32_t* vs, int n, const float* part) {
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
inline void Sample::spet() {
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
inline void Sample::some(int o, const int32_t* ps, int n) {
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
inline void Sample::neuron_mode() {
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

}  // namespace

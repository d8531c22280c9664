// A gated residual block (LC-Net, ConvNet-AIG) in a whole-network program (appended after
// fast_kernel.cpp).
//
// The block is out = post_relu(s_L * bn2(conv2(relu(s_C * bn1(conv1(x))))) + shortcut(x)),
// its batch norms folded into the convs. Per sample: the predictors read the block input's
// channel means (L-Net: s_L = clamp(bl + wl . p, 0, 1); C-Net: s_C = clamp(bc + Wc p, 0, 1));
// a block with s_L <= eps is skipped (out = post_relu(shortcut(x))); otherwise only the
// gated channels with s_C > eps are computed by conv1 (the dense tile over those filters),
// and conv2 reads only them. ConvNet-AIG's gate (kind 1) decides the block alone:
// z = W2 relu(W1 p + b1) + b2 (its batch norm folded into W1), run where softmax(z)[1] >
// threshold. The decisions are those of lcnet/gates.py (tested there).

extern "C" {

struct DyveGate {
  int kind;               // 0: LC-Net's predictors, 1: ConvNet-AIG's gate
  int cin, cmid;          // block input channels; gated channels (conv1's outputs)
  int layer, channel;     // L-Net / C-Net present
  float eps;              // skip where a scale is <= eps
  const float* wl;        // L-Net [cin] and bias
  float bl;
  const float* wc;        // C-Net [cmid, cin] and bias [cmid]
  const float* bc;
  DyveSite* conv1;        // the gated conv, ReLU on (applied after s_C)
  DyveSite* conv2;        // the last conv, ReLU off
  DyveSite* proj;         // a conv shortcut (shortcut == 2), else null
  int shortcut;           // 0: identity, 1: option A (stride 2, `pad` zero channels each side), 2: proj
  int pad;
  int post_relu;          // a ReLU after the merge
  int hidden;             // AIG: hidden units, W1 [hidden, cin], b1, W2 [2, hidden], b2
  const float* w1;
  const float* b1;
  const float* w2;
  const float* b2;
  float threshold;
};

}  // extern "C"

namespace {

// Per channel of a [c, hw] map, its mean (global average pooling; also DYVE_OP_MEAN).
// Four vector accumulators: one scalar accumulator is a chain of dependent adds (GCC may
// not reorder float sums), which made a 16 x 32 x 32 block input's means cost about 25 us,
// more than the predictors' whole arithmetic (benchmarks/NOTES.md, session 17).
void channel_means(const float* a, int c, int hw, float* o) {
  for (int j = 0; j < c; ++j) {
    const float* r = a + (size_t)j * hw;
    vf s0{}, s1{}, s2{}, s3{};
    int q = 0;
    for (; q + 4 * V <= hw; q += 4 * V) {
      s0 += load(r + q), s1 += load(r + q + V);
      s2 += load(r + q + 2 * V), s3 += load(r + q + 3 * V);
    }
    for (; q + V <= hw; q += V) s0 += load(r + q);
    float acc = hsum((s0 + s1) + (s2 + s3));
    for (; q < hw; ++q) acc += r[q];
    o[j] = acc / hw;
  }
}

// The option-A shortcut: a[:, ::sh, ::sw] with `pad` zero channels each side (also
// DYVE_OP_SHORTCUT); a is [c, h, w], o is [c + 2 pad, oh, ow].
void option_a(const float* a, int c, int h, int w, int sh, int sw, int pad, float* o, int oh,
              int ow) {
  const size_t plane = (size_t)oh * ow;
  std::memset(o, 0, sizeof(float) * (c + 2 * pad) * plane);
  for (int j = 0; j < c; ++j)
    for (int y = 0; y < oh; ++y)
      for (int x = 0; x < ow; ++x)
        o[(j + pad) * plane + (size_t)y * ow + x] = a[((size_t)j * h + y * sh) * w + x * sw];
}

// Statistics of a gated block (its row in the program's stats): ST_MACS the MACs its convs
// executed, ST_OVERHEAD the predictors' MACs, ST_STOPPED 1 when the block was skipped,
// ST_APPROXIMATED the gated channels not computed; `changed` when any was skipped.
// x: the sample's block input [cin, h, w]; out: its output [oc, oh, ow].
void gated_run(const DyveGate& g, int h, int w, int oc, int oh, int ow, const float* x,
               float* out, Scratch& sc, double* st, uint8_t* changed) {
  const int hw = h * w, P = oh * ow;
  const size_t size = (size_t)oc * P;
  std::vector<float>& p = sc.gate_p;
  p.resize(g.cin);
  channel_means(x, g.cin, hw, p.data());
  double dummy[DYVE_NSTAT];
  uint8_t flag = 0;
  // the shortcut's value: x itself, or in gate_t (option A, the projection)
  const float* sx = x;
  if (g.shortcut != 0) sc.gate_t.resize(size);
  if (g.shortcut == 1) {
    option_a(x, g.cin, h, w, 2, 2, g.pad, sc.gate_t.data(), oh, ow);
    sx = sc.gate_t.data();
  } else if (g.shortcut == 2) {
    std::memset(dummy, 0, sizeof(dummy));
    Sample(*g.proj, sc, x, sc.gate_t.data(), dummy, &flag).run();
    st[ST_MACS] += dummy[ST_MACS];
    sx = sc.gate_t.data();
  }
  float s_l = 1.f;
  bool run = true;
  if (g.kind == 1) {  // AIG: a two-layer gate, softmax as in PyTorch (max subtracted)
    std::vector<float>& hid = sc.gate_s;
    hid.resize(g.hidden);
    for (int j = 0; j < g.hidden; ++j) {
      float z = g.b1[j];
      for (int c = 0; c < g.cin; ++c) z += g.w1[(size_t)j * g.cin + c] * p[c];
      hid[j] = z < 0.f ? 0.f : z;
    }
    float z[2];
    for (int k = 0; k < 2; ++k) {
      z[k] = g.b2[k];
      for (int j = 0; j < g.hidden; ++j) z[k] += g.w2[(size_t)k * g.hidden + j] * hid[j];
    }
    const float m = std::max(z[0], z[1]), e0 = std::exp(z[0] - m), e1 = std::exp(z[1] - m);
    run = e1 / (e0 + e1) > g.threshold;
    st[ST_OVERHEAD] += (double)g.cin * g.hidden + 2.0 * g.hidden;
  } else if (g.layer) {
    float z = g.bl;
    for (int c = 0; c < g.cin; ++c) z += g.wl[c] * p[c];
    s_l = std::min(std::max(z, 0.f), 1.f);
    run = s_l > g.eps;
    st[ST_OVERHEAD] += g.cin;
  }
  if (!run) {  // skipped: post_relu(shortcut(x))
    st[ST_STOPPED] = 1;
    *changed = 1;
    for (size_t j = 0; j < size; ++j) {
      const float v = sx[j];
      out[j] = g.post_relu && v < 0.f ? 0.f : v;
    }
    return;
  }
  std::vector<int32_t>& kept = sc.gate_kept;
  std::vector<float>& s = sc.gate_s;
  kept.clear();
  s.clear();
  if (g.channel) {
    for (int j = 0; j < g.cmid; ++j) {
      float z = g.bc[j];
      const float* w = g.wc + (size_t)j * g.cin;
      for (int c = 0; c < g.cin; ++c) z += w[c] * p[c];
      z = std::min(std::max(z, 0.f), 1.f);
      if (z > g.eps) kept.push_back(j), s.push_back(z);
    }
    st[ST_OVERHEAD] += (double)g.cin * g.cmid;
  } else {
    for (int j = 0; j < g.cmid; ++j) kept.push_back(j), s.push_back(1.f);
  }
  const int k = (int)kept.size();
  st[ST_APPROXIMATED] = g.cmid - k;
  *changed = k < g.cmid;
  if (k == 0) {  // no channel kept: conv2 of nothing is its (folded) bias
    const DyveSite& c2 = *g.conv2;
    for (int o = 0; o < c2.cout; ++o) {
      const float v = c2.bias[o] * s_l;
      for (int q = 0; q < P; ++q) {
        const float y = v + sx[(size_t)o * P + q];
        out[(size_t)o * P + q] = g.post_relu && y < 0.f ? 0.f : y;
      }
    }
    return;
  }
  const int P1 = g.conv1->ho * g.conv1->wo;
  sc.gate_h.resize((size_t)k * P1);
  Sample a(*g.conv1, sc, x, sc.gate_h.data(), dummy, &flag);
  a.fl = kept.data(), a.nf = k, a.osc = s.data();
  std::memset(dummy, 0, sizeof(dummy));
  a.run();
  st[ST_MACS] += dummy[ST_MACS];
  Sample b(*g.conv2, sc, sc.gate_h.data(), out, dummy, &flag);
  b.in_ids = kept.data(), b.in_n = k, b.oscale = s_l;
  std::memset(dummy, 0, sizeof(dummy));
  b.run();
  st[ST_MACS] += dummy[ST_MACS];
  for (size_t j = 0; j < size; ++j) {
    const float v = out[j] + sx[j];
    out[j] = g.post_relu && v < 0.f ? 0.f : v;
  }
}

}  // namespace

// An early exit's decision in a whole-network program (appended after fast_gated.cpp).
//
// The exit op reads its head's logits and decides, per sample, whether the sample leaves
// the network there (fast_program.cpp then writes the logits as its output and runs none
// of its later ops). The rules are those of adaptive/policy.py's batch-1 path
// (ThresholdPolicy.decide_one, features_one, Classifier.score_one) in the same double
// arithmetic and order, on a float32 softmax computed as PyTorch's is (max, exp, sum,
// scale by the reciprocal). The decisions agree with the per-module path's unless a
// score sits within float rounding of its threshold (the two softmaxes may differ in the
// last bit).

extern "C" {

struct DyveExit {
  int classes;
  int policy;      // 0: never leave (nothing evaluated), 1: max prob >= threshold,
                   // 2: entropy <= threshold, 3: learned (score > 0)
  int features;    // learned: 0 softmax, 1 confidence (top-k, entropy, margin), 2 both
  int dim;         // learned: the number of features
  int forced;      // -1: the policy decides; 0: stay; 1: leave (the policy is still evaluated)
  double threshold;
  double bias;     // learned: score = sum_j (phi_j - mean_j) / std_j * weight_j + bias
  const double* weight;
  const double* mean;
  const double* std;
};

}  // extern "C"

namespace {

double exit_entropy(const double* p, int c) {
  double s = 0.0;
  for (int i = 0; i < c; ++i) s += p[i] * std::log(std::max(p[i], 1e-30));
  return -s;
}

// Whether the sample with head `logits` leaves (see the file comment); its statistics:
// ST_OVERHEAD the policy's multiply-accumulates, ST_STOPPED 1 when it leaves.
bool exit_run(const DyveExit& e, const float* logits, double* st, uint8_t* changed) {
  thread_local std::vector<double> p, phi;
  const int c = e.classes;
  p.resize(c);
  float mx = logits[0];
  for (int i = 1; i < c; ++i) mx = std::max(mx, logits[i]);
  float sum = 0.f;
  for (int i = 0; i < c; ++i) sum += std::exp(logits[i] - mx);
  const float scale = 1.f / sum;
  for (int i = 0; i < c; ++i) p[i] = (double)(std::exp(logits[i] - mx) * scale);
  bool leave = false;
  if (e.policy == 1) {
    leave = *std::max_element(p.begin(), p.end()) >= e.threshold;
  } else if (e.policy == 2) {
    leave = exit_entropy(p.data(), c) <= e.threshold;
  } else if (e.policy == 3) {
    phi.clear();
    if (e.features != 1) phi.insert(phi.end(), p.begin(), p.end());
    if (e.features != 0) {
      const int k = std::min(5, c);
      std::vector<double> top(p);
      std::partial_sort(top.begin(), top.begin() + k, top.end(), std::greater<double>());
      phi.insert(phi.end(), top.begin(), top.begin() + k);
      phi.push_back(exit_entropy(p.data(), c));
      phi.push_back(top[0] - top[1]);
    }
    double score = 0.0;
    for (int j = 0; j < e.dim; ++j) score += (phi[j] - e.mean[j]) / e.std[j] * e.weight[j];
    leave = score + e.bias > 0.0;
    st[ST_OVERHEAD] = e.dim;
  }
  if (e.forced >= 0) leave = e.forced != 0;
  st[ST_STOPPED] = leave;
  *changed = leave;
  return leave;
}

}  // namespace

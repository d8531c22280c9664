// A D2NN controller's decision in a whole-network program (appended after fast_exit.cpp).
//
// The route op reads the controller's Q-values and picks, per sample, the action
// argmax_k (q_k - pen_k) (D2NN's greedy policy with its cost bias, pen = bias x cost,
// computed in float32 as PyTorch's is; the first maximum wins, a NaN wins as in
// torch.argmax), or a fixed action (the static network). Each node the controller gates
// has a flag per sample; the op clears the flags of the nodes its action does not enable
// (several controllers gating a node: all must enable it), and fast_program.cpp skips the
// ops of a node whose flag is clear. A route op that is itself skipped (its controller
// was not reached) clears every flag it owns.

extern "C" {

struct DyveRoute {
  int actions;
  int fixed;         // >= 0: take this action, Q not read; -1: the greedy policy
  const float* pen;  // [actions]: subtracted from Q before the argmax
  int ntargets;
  const int* flags;  // [ntargets]: the flag of each node it gates
  const int* masks;  // [ntargets]: bit k set when action k enables that node
};

}  // extern "C"

namespace {

// The action taken for a sample with Q-values `q`; clears the flags it does not enable.
int route_run(const DyveRoute& r, const float* q, uint8_t* flags) {
  int best = r.fixed;
  if (best < 0) {
    best = 0;
    float top = q[0] - r.pen[0];
    if (top == top) {
      for (int k = 1; k < r.actions; ++k) {
        const float v = q[k] - r.pen[k];
        if (v != v) {
          best = k;
          break;
        }
        if (v > top) top = v, best = k;
      }
    }
  }
  for (int t = 0; t < r.ntargets; ++t)
    if (!((r.masks[t] >> best) & 1)) flags[r.flags[t]] = 0;
  return best;
}

// The controller was not reached: none of the nodes it gates runs.
void route_off(const DyveRoute& r, uint8_t* flags) {
  for (int t = 0; t < r.ntargets; ++t) flags[r.flags[t]] = 0;
}

}  // namespace

// usage: nll MODEL N_CTX FREQ_SCALE ATTN_FACTOR: the mean NLL llama.cpp gives a fixed pseudo-random
// sequence of 384 token ids (200..2199) with context size N_CTX; FREQ_SCALE 0 and ATTN_FACTOR -1
// leave the model's own (check.sh compares `longrope apply`'s GGUF copies with these knobs)
#include "llama.h"
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
int main(int argc, char ** argv) {
    if (argc < 5) { fprintf(stderr, "usage\n"); return 2; }
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    ggml_backend_load_all();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) { printf("LOAD FAILED\n"); return 1; }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = atoi(argv[2]); cp.n_batch = 512; cp.n_ubatch = 512; cp.n_threads = 2; cp.n_threads_batch = 2;
    cp.rope_freq_scale = atof(argv[3]); cp.yarn_attn_factor = atof(argv[4]);
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { printf("CTX FAILED\n"); return 1; }
    const int T = 384;
    std::vector<llama_token> toks; unsigned s = 7;
    for (int i = 0; i < T; i++) { s = s * 1103515245u + 12345u; toks.push_back(200 + (s >> 8) % 2000); }
    llama_batch b = llama_batch_init(T, 0, 1);
    for (int i = 0; i < T; i++) { b.token[i] = toks[i]; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1; }
    b.n_tokens = T;
    if (llama_decode(ctx, b)) { printf("DECODE FAILED\n"); return 1; }
    const int nv = llama_vocab_n_tokens(llama_model_get_vocab(model));
    double nll = 0;
    for (int i = 0; i + 1 < T; i++) {
        const float * lg = llama_get_logits_ith(ctx, i);
        double m = -1e30; for (int v = 0; v < nv; v++) m = fmax(m, lg[v]);
        double z = 0; for (int v = 0; v < nv; v++) z += exp(lg[v] - m);
        nll += -(lg[toks[i + 1]] - m - log(z));
    }
    printf("%.6f\n", nll / (T - 1));
    return 0;
}

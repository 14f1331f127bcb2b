/* Two hot loops of training on the CPU, each a single pass where torch ops take several.
 *
 * Both give the bits of the torch ops they replace (xreflect/training/cpu_kernels.py compiles
 * this file and falls back to those ops; tests/training/test_cpu_kernels.py compares the two).
 * Built with -ffp-contract=off: a fused multiply-add would round differently from torch's
 * separate multiply and add.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define GAMMA 0x9E3779B97F4A7C15ULL

static inline uint64_t splitmix64_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* relu(a + b) for bf16 bit patterns: the float sum, rounded to nearest even; NaN as torch's
 * vectorised rounding writes it (0xFFFF); zero and below -> +0. */
static inline uint16_t add_relu_bf16(uint16_t a, uint16_t b) {
    uint32_t ua = (uint32_t)a << 16, ub = (uint32_t)b << 16, u;
    float fa, fb, sum;
    memcpy(&fa, &ua, 4);
    memcpy(&fb, &ub, 4);
    sum = fa + fb;
    memcpy(&u, &sum, 4);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    if (sum != sum) rounded = 0xFFFFu;
    else if (sum <= 0.0f) rounded = 0;
    return (uint16_t)rounded;
}

/* A bf16 hidden layer of one grid point: out = relu(pre + bias) with each dropped unit zeroed.
 * Unit i of the [rows, width] block reads 16 bits of word i / 4 of the point's SplitMix64 stream
 * from `state` (bits 16 * (i % 4) and up, as torch's int16 view of the int64 words reads them)
 * and is kept when they, as an int16, are <= keep_below. Rows from drawn_rows on draw no words
 * (they read word 0: stacked splits' padding rows, never read). width % 4 == 0. */
void bias_relu_drop(const uint16_t *pre, const uint16_t *bias, uint16_t *out, int64_t rows, int64_t width,
                    int64_t drawn_rows, uint64_t state, int16_t keep_below, int threads) {
    const int64_t words_per_row = width / 4;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *p = pre + r * width;
        uint16_t *o = out + r * width;
        const uint64_t first = state + (uint64_t)(r * words_per_row + 1) * GAMMA;
        for (int64_t j = 0; j < words_per_row; j++) {
            const uint64_t word = r < drawn_rows ? splitmix64_mix(first + (uint64_t)j * GAMMA) : 0;
            for (int k = 0; k < 4; k++) {
                const int16_t bits = (int16_t)(uint16_t)(word >> (16 * k));
                const uint16_t value = add_relu_bf16(p[4 * j + k], bias[4 * j + k]);
                o[4 * j + k] = bits <= keep_below ? value : 0;
            }
        }
    }
}

/* The backward of the sample scores s[i] = users[user_rows[i]] . items[item_rows[i]] (fp32 rows
 * of `dim`): users_grad[user_rows[i]] += grad[i] * items[item_rows[i]] and the same for items,
 * sample after sample, as torch's multiply and index_add_ add them. The grads start zeroed.
 * Each thread takes a slice of the columns, so every element still sums in sample order. */
void pair_dots_backward(const float *restrict users, const float *restrict items, const int64_t *user_rows,
                        const int64_t *item_rows, const float *grad, float *restrict users_grad,
                        float *restrict items_grad,
                        int64_t n, int64_t dim, int threads) {
    #pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        const int64_t part = omp_get_thread_num(), parts = omp_get_num_threads();
#else
        const int64_t part = 0, parts = 1;
#endif
        const int64_t lo = dim * part / parts, hi = dim * (part + 1) / parts;
        for (int64_t i = 0; i < n; i++) {
            const float g = grad[i];
            const float *u = users + user_rows[i] * dim, *v = items + item_rows[i] * dim;
            float *du = users_grad + user_rows[i] * dim, *dv = items_grad + item_rows[i] * dim;
            for (int64_t c = lo; c < hi; c++) {
                du[c] += g * v[c];
                dv[c] += g * u[c];
            }
        }
    }
}

/* A hidden layer's bias, ReLU and dropout for bf16 training on the CPU, in one pass.
 *
 * For one grid point: out = relu(pre + bias), with each dropped unit zeroed. Unit i of the row's
 * [rows, width] block reads 16 bits of word i / 4 of the point's SplitMix64 stream (bits
 * 16 * (i % 4) and up, as torch's int16 view of the int64 words reads them) and is kept when they,
 * as an int16, are <= keep_below. Rows from drawn_rows on draw no words (word 0: stacked splits'
 * padding rows, never read). The bf16 sum is rounded to nearest even as torch rounds it, so the
 * output has the bits of the torch ops it replaces (xreflect/training/relu_drop_kernel.py, which
 * compiles it; tests/training/test_relu_drop_kernel.py compares the two).
 */
#include <stdint.h>
#include <string.h>

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

void bias_relu_drop(const uint16_t *pre, const uint16_t *bias, uint16_t *out, int64_t rows, int64_t width,
                    int64_t drawn_rows, uint64_t state, int16_t keep_below, int threads) {
    const int64_t words_per_row = width / 4;  /* the caller guarantees width % 4 == 0 */
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

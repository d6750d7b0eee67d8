// The hand-written C limit for benchmarks/match.py: the Dice threshold kernel as a C
// programmer with intrinsics would write it for the CPU in hand. Compiled at benchmark time
// with the system gcc into a temporary directory; never part of bloomlink itself.
//
// Every kernel does the same work as bloomlink's numba kernels (linkage_unit/kernels.py):
// the caller passes the right side sorted by popcount (as bloomlink sorts it); the kernel
// counts shared bits of every (left, right) pair, stops half-way where
// "shared so far + min(bits left in a, bits left in b)" cannot reach the row's floor in
// this column tile (required[|a| + the tile's least popcount]), and keeps a pair iff
// shared >= required[|a| + |b|] (the integer table of linkage_unit/similarity.py). Each
// returns the number of kept pairs (or -1 when the kernel does not apply) and writes up to
// `capacity` of them.
//
//   dice_scalar  POPCNT on 64-bit words, 4 rows x 1 column (any x86-64 with POPCNT)
//   dice_avx2    nibble planes + VPSHUFB lookups, bytes summed by VPSADBW, 4 rows x 4 columns
//   dice_avx2_hs Harley-Seal carry-save adders over 8 words, then VPSHUFB on 4 vectors
//   dice_avx512  VPOPCNTQ on 8 columns, 4 rows at a time (AVX-512 VPOPCNTDQ)
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TILE 2048
#define NEVER (1LL << 40)

typedef struct {
    int64_t kept, capacity;
    int32_t *rows, *cols;
} Out;

static inline void emit(Out *out, int64_t row, int64_t col) {
    if (out->kept < out->capacity) {
        out->rows[out->kept] = (int32_t)row;
        out->cols[out->kept] = (int32_t)col;
    }
    out->kept++;
}

static int64_t popcount_words(const uint64_t *w, int64_t n) {
    int64_t s = 0;
    for (int64_t k = 0; k < n; k++) s += __builtin_popcountll(w[k]);
    return s;
}

// Bits after the split, per record, and each row's floor in the tile whose least right
// popcount is `least`: a lower bound of required[] for every pair of that row and tile.
typedef struct {
    int64_t *rest_left, *rest_right;
} Rest;

static Rest rest(const uint64_t *L, int64_t n, const uint64_t *R, int64_t m, int64_t padded,
                 int64_t words, int64_t split) {
    Rest b;
    b.rest_left = calloc((size_t)(n + 8), sizeof(int64_t));
    b.rest_right = aligned_alloc(64, sizeof(int64_t) * (size_t)padded);
    for (int64_t i = 0; i < n; i++) b.rest_left[i] = popcount_words(L + i * words + split, words - split);
    for (int64_t j = 0; j < padded; j++)
        b.rest_right[j] = j < m ? popcount_words(R + j * words + split, words - split) : 0;
    return b;
}

static inline int64_t floor_of(int64_t row, int64_t n, const int32_t *lc, int32_t least,
                               const int32_t *req) {
    if (row >= n) return NEVER;
    int64_t total = lc[row] + least;
    return req[total < 1 ? 1 : total];
}

static void free_rest(Rest b) {
    free(b.rest_left);
    free(b.rest_right);
}

__attribute__((unused)) static uint64_t *word_major(const uint64_t *R, int64_t m, int64_t words, int64_t padded) {
    uint64_t *T = aligned_alloc(64, sizeof(uint64_t) * (size_t)(words * padded));
    memset(T, 0, sizeof(uint64_t) * (size_t)(words * padded));
    for (int64_t j = 0; j < m; j++)
        for (int64_t w = 0; w < words; w++) T[w * padded + j] = R[j * words + w];
    return T;
}

// Kept scalar: gcc would otherwise vectorise the word loop (with VPOPCNTQ where present).
// Four rows at a time, so each right word loaded serves four POPCNTs.
__attribute__((optimize("no-tree-vectorize"))) int64_t dice_scalar(
    const uint64_t *L, int64_t n, const uint64_t *R, int64_t m, int64_t words, const int32_t *lc,
    const int32_t *rc, const int32_t *req, int32_t *rows, int32_t *cols, int64_t capacity) {
    int64_t split = words >= 8 ? words / 2 : words;
    int64_t n4 = (n + 3) / 4 * 4;
    Rest b = rest(L, n, R, m, m, words, split);
    uint64_t *A = calloc((size_t)(n4 * words), sizeof(uint64_t));
    memcpy(A, L, sizeof(uint64_t) * (size_t)(n * words));
    Out out = {0, capacity, rows, cols};
    for (int64_t t0 = 0; t0 < m; t0 += TILE) {
        int64_t t1 = t0 + TILE < m ? t0 + TILE : m;
        for (int64_t i = 0; i < n; i += 4) {
            const uint64_t *a0 = A + i * words, *a1 = a0 + words, *a2 = a1 + words, *a3 = a2 + words;
            int64_t floor[4], rest_left[4];
            for (int r = 0; r < 4; r++) {
                floor[r] = floor_of(i + r, n, lc, rc[t0], req);
                rest_left[r] = b.rest_left[i + r];
            }
            for (int64_t j = t0; j < t1; j++) {
                const uint64_t *c = R + j * words;
                int64_t s[4] = {0, 0, 0, 0};
                for (int64_t w = 0; w < split; w++) {
                    uint64_t x = c[w];
                    s[0] += __builtin_popcountll(a0[w] & x);
                    s[1] += __builtin_popcountll(a1[w] & x);
                    s[2] += __builtin_popcountll(a2[w] & x);
                    s[3] += __builtin_popcountll(a3[w] & x);
                }
                int any = 0;
                for (int r = 0; r < 4; r++) {
                    int64_t least = rest_left[r] < b.rest_right[j] ? rest_left[r] : b.rest_right[j];
                    any |= s[r] + least >= floor[r];
                }
                if (!any) continue;
                for (int64_t w = split; w < words; w++) {
                    uint64_t x = c[w];
                    s[0] += __builtin_popcountll(a0[w] & x);
                    s[1] += __builtin_popcountll(a1[w] & x);
                    s[2] += __builtin_popcountll(a2[w] & x);
                    s[3] += __builtin_popcountll(a3[w] & x);
                }
                for (int r = 0; r < 4 && i + r < n; r++)
                    if (s[r] >= req[lc[i + r] + rc[j]]) emit(&out, i + r, j);
            }
        }
    }
    free(A);
    free_rest(b);
    return out.kept;
}

#ifdef __AVX2__
static const int8_t NIBBLE_POPCOUNTS[32] = {0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4};

// Any lane of 4 rows x 4 columns that may still reach its row's floor.
static inline int may_reach4(const __m256i *s, __m256i rest_right, const int64_t *rest_left,
                             const int64_t *floor) {
    __m256i any = _mm256_setzero_si256();
    for (int r = 0; r < 4; r++) {
        __m256i f = _mm256_set1_epi64x(floor[r] - 1);
        __m256i by_right = _mm256_cmpgt_epi64(_mm256_add_epi64(s[r], rest_right), f);
        __m256i by_left = _mm256_cmpgt_epi64(_mm256_add_epi64(s[r], _mm256_set1_epi64x(rest_left[r])), f);
        any = _mm256_or_si256(any, _mm256_and_si256(by_right, by_left));
    }
    return !_mm256_testz_si256(any, any);
}

static inline void check4(Out *out, const __m256i *s, int64_t i, int64_t j, int64_t n, int64_t m,
                          const int64_t *floor, const int32_t *lc, const int32_t *rc,
                          const int32_t *req) {
    __m256i any = _mm256_setzero_si256();
    for (int r = 0; r < 4; r++)
        any = _mm256_or_si256(any, _mm256_cmpgt_epi64(s[r], _mm256_set1_epi64x(floor[r] - 1)));
    if (_mm256_testz_si256(any, any)) return;
    int64_t v[4][4];
    for (int r = 0; r < 4; r++) _mm256_storeu_si256((__m256i *)v[r], s[r]);
    for (int r = 0; r < 4 && i + r < n; r++)
        for (int q = 0; q < 4 && j + q < m; q++)
            if (v[r][q] >= req[lc[i + r] + rc[j + q]]) emit(out, i + r, j + q);
}

// Word range [w0, w1) of 4 rows (nibble planes of left row i at al/ah) against 4 columns.
static inline void count_nibbles(__m256i *s, const uint64_t *lo, const uint64_t *hi,
                                 int64_t padded, int64_t j, const uint64_t *al, const uint64_t *ah,
                                 int64_t words, int64_t w0, int64_t w1) {
    const __m256i lut = _mm256_loadu_si256((const __m256i *)NIBBLE_POPCOUNTS);
    const __m256i zero = _mm256_setzero_si256();
    for (int64_t a = w0; a < w1; a += 31) {
        int64_t b = a + 31 < w1 ? a + 31 : w1;
        __m256i c0 = zero, c1 = zero, c2 = zero, c3 = zero;
        for (int64_t w = a; w < b; w++) {
            __m256i bl = _mm256_load_si256((const __m256i *)(lo + w * padded + j));
            __m256i bh = _mm256_load_si256((const __m256i *)(hi + w * padded + j));
#define LOOK(c, r)                                                                              \
    c = _mm256_add_epi8(c, _mm256_shuffle_epi8(lut, _mm256_and_si256(bl, _mm256_set1_epi64x((long long)al[r * words + w])))); \
    c = _mm256_add_epi8(c, _mm256_shuffle_epi8(lut, _mm256_and_si256(bh, _mm256_set1_epi64x((long long)ah[r * words + w]))));
            LOOK(c0, 0) LOOK(c1, 1) LOOK(c2, 2) LOOK(c3, 3)
#undef LOOK
        }
        s[0] = _mm256_add_epi64(s[0], _mm256_sad_epu8(c0, zero));
        s[1] = _mm256_add_epi64(s[1], _mm256_sad_epu8(c1, zero));
        s[2] = _mm256_add_epi64(s[2], _mm256_sad_epu8(c2, zero));
        s[3] = _mm256_add_epi64(s[3], _mm256_sad_epu8(c3, zero));
    }
}

int64_t dice_avx2(const uint64_t *L, int64_t n, const uint64_t *R, int64_t m, int64_t words,
                  const int32_t *lc, const int32_t *rc, const int32_t *req, int32_t *rows,
                  int32_t *cols, int64_t capacity) {
    int64_t split = words >= 8 ? words / 2 : words;
    int64_t padded = (m + 7) / 8 * 8, n4 = (n + 3) / 4 * 4;
    Rest b = rest(L, n, R, m, padded, words, split);
    uint64_t *T = word_major(R, m, words, padded);
    uint64_t *lo = aligned_alloc(64, sizeof(uint64_t) * (size_t)(words * padded));
    uint64_t *hi = aligned_alloc(64, sizeof(uint64_t) * (size_t)(words * padded));
    uint64_t *al = calloc((size_t)(n4 * words), sizeof(uint64_t));
    uint64_t *ah = calloc((size_t)(n4 * words), sizeof(uint64_t));
    const uint64_t M = 0x0f0f0f0f0f0f0f0fULL;
    for (int64_t k = 0; k < words * padded; k++) {
        lo[k] = T[k] & M;
        hi[k] = (T[k] >> 4) & M;
    }
    for (int64_t k = 0; k < n * words; k++) {
        al[k] = L[k] & M;
        ah[k] = (L[k] >> 4) & M;
    }
    Out out = {0, capacity, rows, cols};
    for (int64_t t0 = 0; t0 < padded; t0 += TILE) {
        int64_t t1 = t0 + TILE < padded ? t0 + TILE : padded;
        for (int64_t i = 0; i < n; i += 4) {
            const uint64_t *a_lo = al + i * words, *a_hi = ah + i * words;
            int64_t floor[4];
            for (int r = 0; r < 4; r++) floor[r] = floor_of(i + r, n, lc, rc[t0], req);
            for (int64_t j = t0; j < t1; j += 4) {
                __m256i s[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(),
                                _mm256_setzero_si256(), _mm256_setzero_si256()};
                count_nibbles(s, lo, hi, padded, j, a_lo, a_hi, words, 0, split);
                if (split < words) {
                    __m256i rest = _mm256_load_si256((const __m256i *)(b.rest_right + j));
                    if (!may_reach4(s, rest, b.rest_left + i, floor)) continue;
                    count_nibbles(s, lo, hi, padded, j, a_lo, a_hi, words, split, words);
                }
                check4(&out, s, i, j, n, m, floor, lc, rc, req);
            }
        }
    }
    free(T); free(lo); free(hi); free(al); free(ah);
    free_rest(b);
    return out.kept;
}

static inline __m256i byte_popcounts(__m256i v, __m256i lut, __m256i nibble) {
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, nibble)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble)));
}

#define CSA(high, low, a, b, c)                                                             \
    do {                                                                                    \
        __m256i u_ = _mm256_xor_si256(a, b);                                                \
        high = _mm256_or_si256(_mm256_and_si256(a, b), _mm256_and_si256(u_, c));            \
        low = _mm256_xor_si256(u_, c);                                                      \
    } while (0)

// Shared bits of 8 words [w0, w0 + 8) of row a against 4 columns: Harley-Seal.
static inline __m256i count8_hs(const uint64_t *T, int64_t padded, int64_t j, const uint64_t *a,
                                int64_t w0, __m256i lut, __m256i nibble) {
    __m256i x[8];
    for (int k = 0; k < 8; k++)
        x[k] = _mm256_and_si256(_mm256_load_si256((const __m256i *)(T + (w0 + k) * padded + j)),
                                _mm256_set1_epi64x((long long)a[w0 + k]));
    const __m256i zero = _mm256_setzero_si256();
    __m256i ones, twos, twos_a, twos_b, fours, fours_a, fours_b, eights;
    CSA(twos_a, ones, x[0], x[1], x[2]);
    CSA(twos_b, ones, ones, x[3], x[4]);
    CSA(fours_a, twos, twos_a, twos_b, zero);
    CSA(twos_a, ones, ones, x[5], x[6]);
    CSA(twos_b, ones, ones, x[7], zero);
    CSA(fours_b, twos, twos, twos_a, twos_b);
    CSA(eights, fours, fours_a, fours_b, zero);
    // ones + 2 twos + 4 fours + 8 eights, per byte (at most 8 + 16 + 32 + 64 = 120).
    __m256i bytes = byte_popcounts(eights, lut, nibble);
    bytes = _mm256_add_epi8(_mm256_add_epi8(bytes, bytes), byte_popcounts(fours, lut, nibble));
    bytes = _mm256_add_epi8(_mm256_add_epi8(bytes, bytes), byte_popcounts(twos, lut, nibble));
    bytes = _mm256_add_epi8(_mm256_add_epi8(bytes, bytes), byte_popcounts(ones, lut, nibble));
    return _mm256_sad_epu8(bytes, zero);
}

int64_t dice_avx2_hs(const uint64_t *L, int64_t n, const uint64_t *R, int64_t m, int64_t words,
                     const int32_t *lc, const int32_t *rc, const int32_t *req, int32_t *rows,
                     int32_t *cols, int64_t capacity) {
    if (words % 16 != 0) return -1;  // two 8-word halves per 16 words
    int64_t split = words / 2;
    int64_t padded = (m + 7) / 8 * 8;
    Rest b = rest(L, n, R, m, padded, words, split);
    uint64_t *T = word_major(R, m, words, padded);
    const __m256i lut = _mm256_loadu_si256((const __m256i *)NIBBLE_POPCOUNTS);
    const __m256i nibble = _mm256_set1_epi8(0x0f);
    Out out = {0, capacity, rows, cols};
    for (int64_t t0 = 0; t0 < padded; t0 += TILE) {
        int64_t t1 = t0 + TILE < padded ? t0 + TILE : padded;
        for (int64_t i = 0; i < n; i++) {
            const uint64_t *a = L + i * words;
            const __m256i f = _mm256_set1_epi64x(floor_of(i, n, lc, rc[t0], req) - 1);
            const __m256i ra = _mm256_set1_epi64x(b.rest_left[i]);
            for (int64_t j = t0; j < t1; j += 4) {
                __m256i s = _mm256_setzero_si256();
                for (int64_t w = 0; w < split; w += 8)
                    s = _mm256_add_epi64(s, count8_hs(T, padded, j, a, w, lut, nibble));
                __m256i rb = _mm256_load_si256((const __m256i *)(b.rest_right + j));
                __m256i ok = _mm256_and_si256(_mm256_cmpgt_epi64(_mm256_add_epi64(s, rb), f),
                                              _mm256_cmpgt_epi64(_mm256_add_epi64(s, ra), f));
                if (_mm256_testz_si256(ok, ok)) continue;
                for (int64_t w = split; w < words; w += 8)
                    s = _mm256_add_epi64(s, count8_hs(T, padded, j, a, w, lut, nibble));
                __m256i pass = _mm256_cmpgt_epi64(s, f);
                if (_mm256_testz_si256(pass, pass)) continue;
                int64_t v[4];
                _mm256_storeu_si256((__m256i *)v, s);
                for (int q = 0; q < 4 && j + q < m; q++)
                    if (v[q] >= req[lc[i] + rc[j + q]]) emit(&out, i, j + q);
            }
        }
    }
    free(T);
    free_rest(b);
    return out.kept;
}
#endif

#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
// 4 rows' words, each already in all 8 lanes (gcc would otherwise emit a separate
// broadcast per use instead of folding it into VPANDQ).
static inline void count8(__m512i *s, const uint64_t *T, int64_t padded, int64_t j,
                          const __m512i *a, int64_t w0, int64_t w1) {
    __m512i s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
    for (int64_t w = w0; w < w1; w++) {
        __m512i c = _mm512_load_si512((const void *)(T + w * padded + j));
        s0 = _mm512_add_epi64(s0, _mm512_popcnt_epi64(_mm512_and_si512(c, a[4 * w])));
        s1 = _mm512_add_epi64(s1, _mm512_popcnt_epi64(_mm512_and_si512(c, a[4 * w + 1])));
        s2 = _mm512_add_epi64(s2, _mm512_popcnt_epi64(_mm512_and_si512(c, a[4 * w + 2])));
        s3 = _mm512_add_epi64(s3, _mm512_popcnt_epi64(_mm512_and_si512(c, a[4 * w + 3])));
    }
    s[0] = s0; s[1] = s1; s[2] = s2; s[3] = s3;
}

int64_t dice_avx512(const uint64_t *L, int64_t n, const uint64_t *R, int64_t m, int64_t words,
                    const int32_t *lc, const int32_t *rc, const int32_t *req, int32_t *rows,
                    int32_t *cols, int64_t capacity) {
    int64_t split = words >= 8 ? words / 2 : words;
    int64_t padded = (m + 7) / 8 * 8;
    Rest b = rest(L, n, R, m, padded, words, split);
    uint64_t *T = word_major(R, m, words, padded);
    __m512i *a = aligned_alloc(64, sizeof(__m512i) * (size_t)(4 * words));
    Out out = {0, capacity, rows, cols};
    for (int64_t t0 = 0; t0 < padded; t0 += TILE) {
        int64_t t1 = t0 + TILE < padded ? t0 + TILE : padded;
        for (int64_t i = 0; i < n; i += 4) {
            for (int64_t w = 0; w < words; w++)
                for (int r = 0; r < 4; r++)
                    a[4 * w + r] = _mm512_set1_epi64(i + r < n ? (long long)L[(i + r) * words + w] : 0);
            __m512i floor[4], rest_left[4];
            for (int r = 0; r < 4; r++) {
                floor[r] = _mm512_set1_epi64(floor_of(i + r, n, lc, rc[t0], req));
                rest_left[r] = _mm512_set1_epi64(b.rest_left[i + r]);
            }
            for (int64_t j = t0; j < t1; j += 8) {
                __m512i s[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(),
                                _mm512_setzero_si512(), _mm512_setzero_si512()};
                count8(s, T, padded, j, a, 0, split);
                if (split < words) {
                    __m512i rb = _mm512_load_si512((const void *)(b.rest_right + j));
                    __mmask8 any = 0;
                    for (int r = 0; r < 4; r++) {
                        __m512i bound = _mm512_add_epi64(s[r], _mm512_min_epi64(rb, rest_left[r]));
                        any |= _mm512_cmpge_epi64_mask(bound, floor[r]);
                    }
                    if (!any) continue;
                    count8(s, T, padded, j, a, split, words);
                }
                __mmask8 any = 0;
                for (int r = 0; r < 4; r++) any |= _mm512_cmpge_epi64_mask(s[r], floor[r]);
                if (!any) continue;
                int64_t v[4][8];
                for (int r = 0; r < 4; r++) _mm512_storeu_si512(v[r], s[r]);
                for (int r = 0; r < 4 && i + r < n; r++)
                    for (int q = 0; q < 8 && j + q < m; q++)
                        if (v[r][q] >= req[lc[i + r] + rc[j + q]]) emit(&out, i + r, j + q);
            }
        }
    }
    free(T); free(a);
    free_rest(b);
    return out.kept;
}
#endif

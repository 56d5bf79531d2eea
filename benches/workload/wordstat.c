/*
 * wordstat: the C program the mixed workload (benches/workload/src/mixed.rs, phase
 * mixed_cc) compiles with tcc inside the guest and then runs on its generated text.
 *
 * Reads stdin and prints one line: lines, words, bytes, distinct words and the 64-bit
 * FNV-1a hash of the input, all in decimal, separated by spaces. Words are runs of bytes
 * other than space, tab and newline; distinct words are counted in an open-addressing
 * hash table that grows as needed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct slot {
    uint64_t hash;
    char *word;
};

static struct slot *table;
static size_t table_size = 1024, table_used;

static uint64_t fnv1a(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    size_t i;
    for (i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static void grow(void);

static void add_word(const char *w, size_t n)
{
    uint64_t h = fnv1a(w, n);
    size_t i = h & (table_size - 1);
    while (table[i].word) {
        if (table[i].hash == h && strlen(table[i].word) == n && memcmp(table[i].word, w, n) == 0)
            return;
        i = (i + 1) & (table_size - 1);
    }
    table[i].hash = h;
    table[i].word = malloc(n + 1);
    if (!table[i].word) {
        perror("malloc");
        exit(1);
    }
    memcpy(table[i].word, w, n);
    table[i].word[n] = 0;
    if (++table_used * 2 > table_size)
        grow();
}

static void grow(void)
{
    struct slot *old = table;
    size_t old_size = table_size, i;
    table_size *= 2;
    table = calloc(table_size, sizeof *table);
    if (!table) {
        perror("calloc");
        exit(1);
    }
    for (i = 0; i < old_size; i++) {
        if (old[i].word) {
            size_t j = old[i].hash & (table_size - 1);
            while (table[j].word)
                j = (j + 1) & (table_size - 1);
            table[j] = old[i];
        }
    }
    free(old);
}

int main(void)
{
    static char buf[65536];
    char word[256];
    size_t wlen = 0, n, i;
    unsigned long long lines = 0, words = 0, bytes = 0;
    uint64_t h = 1469598103934665603ULL;

    table = calloc(table_size, sizeof *table);
    if (!table) {
        perror("calloc");
        return 1;
    }
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
        bytes += n;
        for (i = 0; i < n; i++) {
            char c = buf[i];
            h ^= (unsigned char)c;
            h *= 1099511628211ULL;
            if (c == '\n')
                lines++;
            if (c == ' ' || c == '\t' || c == '\n') {
                if (wlen) {
                    words++;
                    add_word(word, wlen);
                    wlen = 0;
                }
            } else if (wlen < sizeof word) {
                word[wlen++] = c;
            }
        }
    }
    if (wlen) {
        words++;
        add_word(word, wlen);
    }
    printf("%llu %llu %llu %llu %llu\n", lines, words, bytes, (unsigned long long)table_used,
           (unsigned long long)h);
    return 0;
}

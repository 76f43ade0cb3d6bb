/*
 * svg.c: the bar charts of `tandem demo --svg` and `tandem bench --svg`, and JSON strings.
 *
 * The chart is plain SVG 1.1 with no script, no external font and no stylesheet beyond one
 * <style> element, so a browser, an image viewer or GitHub's Markdown renders it alike. Layout:
 * a title, a subtitle, then for each group a heading and one row per bar: the series name,
 * right-aligned in a left column, the bar, and its label after it. Each group is scaled on its
 * own, because a chart of "seconds for 16 downloads" beside "seconds for 4 sums" on one axis
 * would flatten one of them; the labels carry the numbers.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

enum {
  WIDTH = 960,
  LABEL_W = 300, /* the series column */
  BAR_W = 420,   /* the longest bar of a group */
  ROW_H = 20,
  BAR_H = 14,
  GROUP_GAP = 14,
  TOP = 64,
};

/* Colours by series, in order of first appearance; they repeat after the last. */
static const char *const palette[] = { "#4e79a7", "#f28e2b", "#e15759", "#76b7b2",
                                       "#59a14f", "#edc948", "#b07aa1", "#9c755f" };

typedef struct bar {
  char *group, *series, *label;
  double value;
} bar;

struct cli_chart {
  char *title, *subtitle;
  bar *bars;
  size_t n, cap;
};

static char *dup(const char *s) {
  return strdup(s != NULL ? s : "");
}

cli_chart *cli_chart_new(const char *title, const char *subtitle) {
  cli_chart *c = calloc(1, sizeof *c);
  if (c == NULL) return NULL;
  c->title = dup(title);
  c->subtitle = subtitle != NULL ? strdup(subtitle) : NULL;
  if (c->title == NULL || (subtitle != NULL && c->subtitle == NULL)) {
    cli_chart_free(c);
    return NULL;
  }
  return c;
}

int cli_chart_bar(cli_chart *c, const char *group, const char *series, double value,
                  const char *label) {
  if (c->n == c->cap) {
    size_t cap = c->cap ? c->cap * 2 : 16;
    bar *b = realloc(c->bars, cap * sizeof *b);
    if (b == NULL) return -ENOMEM;
    c->bars = b;
    c->cap = cap;
  }
  bar *b = &c->bars[c->n];
  b->group = dup(group);
  b->series = dup(series);
  b->label = dup(label);
  b->value = value;
  if (b->group == NULL || b->series == NULL || b->label == NULL) {
    free(b->group);
    free(b->series);
    free(b->label);
    return -ENOMEM;
  }
  c->n++;
  return 0;
}

void cli_chart_free(cli_chart *c) {
  if (c == NULL) return;
  for (size_t i = 0; i < c->n; i++) {
    free(c->bars[i].group);
    free(c->bars[i].series);
    free(c->bars[i].label);
  }
  free(c->bars);
  free(c->title);
  free(c->subtitle);
  free(c);
}

static void xml_text(FILE *f, const char *s) {
  for (; *s != '\0'; s++) {
    switch (*s) {
    case '&':
      fputs("&amp;", f);
      break;
    case '<':
      fputs("&lt;", f);
      break;
    case '>':
      fputs("&gt;", f);
      break;
    case '"':
      fputs("&quot;", f);
      break;
    default:
      /* XML 1.0 forbids most control characters, even escaped. */
      if ((unsigned char)*s < 0x20 && *s != '\t' && *s != '\n') {
        fputc('?', f);
      } else {
        fputc(*s, f);
      }
    }
  }
}

/* Gives each bar the colour of its series: series are numbered in order of first appearance. */
static void series_colours(const cli_chart *c, size_t *colour) {
  size_t next = 0;
  for (size_t i = 0; i < c->n; i++) {
    colour[i] = next;
    for (size_t j = 0; j < i; j++) {
      if (strcmp(c->bars[j].series, c->bars[i].series) == 0) {
        colour[i] = colour[j];
        break;
      }
    }
    if (colour[i] == next) next++;
  }
}

static bool same_group(const cli_chart *c, size_t i, size_t j) {
  return strcmp(c->bars[i].group, c->bars[j].group) == 0;
}

/* Whether bar i is the first of its group (groups are the runs of equal names, in order). */
static bool group_starts(const cli_chart *c, size_t i) {
  return i == 0 || !same_group(c, i - 1, i);
}

int cli_chart_write(const cli_chart *c, FILE *f) {
  size_t *colour = malloc((c->n ? c->n : 1) * sizeof *colour);
  if (colour == NULL) return -ENOMEM;
  series_colours(c, colour);
  size_t groups = 0;
  for (size_t i = 0; i < c->n; i++)
    groups += group_starts(c, i);
  int height = TOP + (int)groups * (ROW_H + GROUP_GAP) + (int)c->n * ROW_H + 10;

  fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
  fprintf(f,
          "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" height=\"%d\" "
          "viewBox=\"0 0 %d %d\">\n",
          WIDTH, height, WIDTH, height);
  fprintf(f, "<style>text{font-family:sans-serif;font-size:12px;fill:#222}"
             ".t{font-size:17px;font-weight:bold}.s{fill:#555}.g{font-weight:bold}"
             ".l{fill:#333}</style>\n");
  fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n");
  fprintf(f, "<text class=\"t\" x=\"12\" y=\"24\">");
  xml_text(f, c->title);
  fprintf(f, "</text>\n");
  if (c->subtitle != NULL) {
    fprintf(f, "<text class=\"s\" x=\"12\" y=\"44\">");
    xml_text(f, c->subtitle);
    fprintf(f, "</text>\n");
  }

  int y = TOP;
  double max = 0;
  for (size_t i = 0; i < c->n; i++) {
    if (group_starts(c, i)) {
      max = 0;
      for (size_t j = i; j < c->n && same_group(c, i, j); j++)
        if (c->bars[j].value > max) max = c->bars[j].value; /* NaN compares false */
      y += GROUP_GAP;
      fprintf(f, "<text class=\"g\" x=\"12\" y=\"%d\">", y + 14);
      xml_text(f, c->bars[i].group);
      fprintf(f, "</text>\n");
      y += ROW_H;
    }
    const bar *b = &c->bars[i];
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">", LABEL_W - 8, y + 14);
    xml_text(f, b->series);
    fprintf(f, "</text>\n");
    double w = 0;
    if (b->value > 0 && max > 0 && isfinite(b->value)) w = b->value / max * BAR_W;
    if (w > 0 && w < 1) w = 1; /* a bar too short to see still shows */
    if (b->value >= 0 && isfinite(b->value)) {
      fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/>\n", LABEL_W,
              y + 3, w, BAR_H, palette[colour[i] % (sizeof palette / sizeof *palette)]);
    }
    fprintf(f, "<text class=\"l\" x=\"%.1f\" y=\"%d\">", LABEL_W + w + 6, y + 14);
    xml_text(f, b->label);
    fprintf(f, "</text>\n");
    y += ROW_H;
  }
  fprintf(f, "</svg>\n");
  free(colour);
  return ferror(f) ? -EIO : 0;
}

int cli_chart_save(const cli_chart *c, const char *path) {
  FILE *f = fopen(path, "w");
  if (f == NULL) return -errno;
  int rc = cli_chart_write(c, f);
  if (fclose(f) != 0 && rc == 0) rc = -errno;
  return rc;
}

void cli_json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s != '\0'; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') {
      fprintf(f, "\\%c", ch);
    } else if (ch == '\n') {
      fputs("\\n", f);
    } else if (ch < 0x20) {
      fprintf(f, "\\u%04x", ch);
    } else {
      fputc(ch, f);
    }
  }
  fputc('"', f);
}

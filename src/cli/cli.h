/*
 * cli.h: what the parts of the tandem command share: the subcommands' entry points and the SVG
 * chart that both `tandem demo` and `tandem bench` draw.
 *
 * The command uses only tandem's public API, as a user's program would (DESIGN.md: the CLI is
 * the top layer). Each subcommand parses its own options and returns the process's exit status:
 * 0 on success, 1 when the work failed, 2 for a usage error (after printing the usage).
 */
#ifndef TDM_CLI_H
#define TDM_CLI_H

#include <stdbool.h>
#include <stdio.h>

/* `tandem demo ARGS`: argv[0] is "demo". (demo.c) */
int cli_demo_main(int argc, char **argv);

/* `tandem bench ARGS`: argv[0] is "bench". (bench/main.c) */
int bench_main(int argc, char **argv);

/* ---- Charts (svg.c) --------------------------------------------------------------------------
 *
 * A horizontal grouped bar chart: one block per group (an experiment, a workload), one bar per
 * series in it (a method, an implementation), in the order they were added. Each group has its
 * own scale (its longest bar fills the width), since groups measure different things; every bar
 * carries its value as text, so no axis is needed. Series are coloured by name, the same name
 * the same colour in every group.
 */
typedef struct cli_chart cli_chart;

/* Makes an empty chart; `subtitle` may be NULL. Returns NULL when out of memory. */
cli_chart *cli_chart_new(const char *title, const char *subtitle);

/*
 * Adds a bar to `group` (created on first use). `value` >= 0 sets its length relative to the
 * group's largest; a NaN or negative value draws no bar, only `label` (say why: "skipped").
 * `label` is the text beside the bar. Strings are copied. Returns 0 or -ENOMEM.
 */
int cli_chart_bar(cli_chart *c, const char *group, const char *series, double value,
                  const char *label);

/* Writes the chart as a standalone SVG document. Returns 0 or a negative errno. */
int cli_chart_write(const cli_chart *c, FILE *f);

/* Writes the chart to the file `path` (replaced if it exists). Returns 0 or a negative errno. */
int cli_chart_save(const cli_chart *c, const char *path);

void cli_chart_free(cli_chart *c);

/* Writes `s` as a JSON string literal, quotes included. */
void cli_json_string(FILE *f, const char *s);

#endif /* TDM_CLI_H */

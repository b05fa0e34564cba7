// Entry points of the desktop studio, called by app/main.cpp. No Qt types here so that app/ needs no Qt headers.
#pragma once

namespace studio {
// `studio` with no arguments, or `studio gui [--open RUN_DIR] [--launch CONFIG] [--runs-dir DIR] [--screenshot PNG] [--exit-when-gates] [--timeout S]`.
// argv[0] is the studio executable; the rest are the gui options. Returns the process exit code.
int studio_gui_main(int argc, char ** argv);
// `studio plot-sweep SOURCE... --out FILE.png|.pdf [--width W --height H]`: headless (offscreen) export of the sweep view:
// scatter of layer parameters against test (else valid) perplexity per run, grouped/coloured by model type, Pareto front drawn.
// A SOURCE is a run directory, a sweep's run directory (its points) or a CSV (the view's export or scripts/results.py).
int studio_plot_sweep_main(int argc, char ** argv);
}

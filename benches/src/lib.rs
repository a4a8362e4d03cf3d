//! corecast benchmarks: shared helpers for the criterion benches and loadgen.

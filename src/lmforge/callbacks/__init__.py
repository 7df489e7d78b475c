"""Lightning callbacks: throughput/MFU, emissions (``lmforge.callbacks.emissions``), samples."""

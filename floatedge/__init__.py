"""floatedge: once-for-all robust image classifiers (FLOAT/FLOATS), from training to Jetson runtime."""
__version__ = "0.1.0"

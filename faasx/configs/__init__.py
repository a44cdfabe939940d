"""placeholder: per-supercomputer configurations"""

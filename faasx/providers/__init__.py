"""placeholder: written by the providers work"""

"""placeholder: written by the launchers work"""

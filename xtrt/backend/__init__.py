"""xtrt.backend"""

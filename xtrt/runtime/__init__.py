"""xtrt.runtime"""

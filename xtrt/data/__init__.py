"""xtrt.data"""

"""xtrt.profile"""

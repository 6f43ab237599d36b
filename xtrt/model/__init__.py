"""xtrt.model"""

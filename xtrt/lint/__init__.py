"""xtrt.lint"""

"""Recipe guidance: which setting each facility/item should run, and the window to run it in.

pseudo_labels (scoring core over the history) -> ranking (credible defect rate per setting
cluster, volume) -> window (the recommended set points and operating window) -> output / report /
mongo (adapters). :class:`RecipeBook` is the worker's fast lookup of published recipes.
"""
from model_store.recipe.build import RecipeResult, compute_recipes, describe_rule
from model_store.recipe.config import RecipeConfig
from model_store.recipe.ranking import rank_clusters, recommend
from model_store.serving.recipe_book import RecipeBook

__all__ = ["RecipeBook", "RecipeConfig", "RecipeResult", "compute_recipes", "describe_rule", "rank_clusters", "recommend"]

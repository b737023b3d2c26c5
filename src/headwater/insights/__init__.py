"""Product-analytics insights (trends, funnels, retention, journeys, timeline, catalog) compiled to SQL."""

"""What several steps share: the elimination rules, the evolving prompts and the evolving call, the response call, the
guards, the reading of a seed source, the funnel and an item's lineage. A step imports other steps only through this
package."""

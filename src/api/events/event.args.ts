import { ArgsType, Field, Int } from "type-graphql";
import { IsIn, IsOptional, Matches, Max, Min } from "class-validator";
import { EVENT_KINDS } from "../../events/event-map";

@ArgsType()
export class EventsArgs {
  @Field(() => Int, { defaultValue: 50, description: "Page size, 1 to 500." })
  @Min(1)
  @Max(500)
  first!: number;

  @Field(() => String, { nullable: true, description: "endCursor of the previous page." })
  @IsOptional()
  @Matches(/^\d+-\d+$/, { message: "after must be a cursor returned by a previous page" })
  after?: string | null;

  @Field(() => [String], { nullable: true, description: "Only these kinds." })
  @IsOptional()
  @IsIn(EVENT_KINDS as string[], { each: true, message: `kinds must be among: ${EVENT_KINDS.join(", ")}` })
  kinds?: string[] | null;

  @Field(() => String, { nullable: true, description: "Only events about this node." })
  @IsOptional()
  node?: string | null;
}

@ArgsType()
export class ClusterEventsSubscriptionArgs {
  @Field(() => [String], { nullable: true, description: "Only these kinds." })
  @IsOptional()
  @IsIn(EVENT_KINDS as string[], { each: true, message: `kinds must be among: ${EVENT_KINDS.join(", ")}` })
  kinds?: string[] | null;

  @Field(() => String, { nullable: true })
  @IsOptional()
  node?: string | null;
}
